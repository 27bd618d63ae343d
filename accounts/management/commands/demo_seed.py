"""`manage.py demo_seed`: one user per role, local repositories and a demo campaign."""

import json
import secrets

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand

from accounts.passwords import user_password_set_by_operator
from accounts.roles import ADMIN, MANAGER, REVIEWER
from accounts.services import user_create, user_role_set
from campaigns.demo import demo_campaign_seed

DEMO_USERS = {"manager": MANAGER, "reviewer": REVIEWER, "admin": ADMIN}


def demo_users_seed() -> dict[str, str]:
    """One user per role; passwords are generated once and kept in the data dir."""
    path = settings.DATA_DIR / "demo-passwords.json"
    passwords = json.loads(path.read_text()) if path.exists() else {}
    for username, role in DEMO_USERS.items():
        password = passwords.get(username) or f"{username}-{secrets.token_hex(4)}"
        passwords[username] = password
        user = User.objects.filter(username=username).first()
        if user is None:
            user_create(username=username, role=role, password=password)
        else:
            if not user.check_password(password):  # revokes their tokens, audited
                user_password_set_by_operator(user=user, new_password=password, command="demo_seed")
            user_role_set(user=user, role=role)
    path.write_text(json.dumps(passwords, indent=2))
    path.chmod(0o600)
    return passwords


class Command(BaseCommand):
    help = "Seed the demo: one user per role, local git repositories and a demo campaign."

    def handle(self, *args, **options):
        passwords = demo_users_seed()
        for line in demo_campaign_seed():
            self.stdout.write(line)
        self.stdout.write("Demo logins:")
        for username, password in passwords.items():
            self.stdout.write(f"  {DEMO_USERS[username]:<9} {username} / {password}")
