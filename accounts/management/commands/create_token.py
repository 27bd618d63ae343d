from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from accounts.services import token_create


class Command(BaseCommand):
    help = "Create an API token for a user and print it once (it is stored only as a hash)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to tell tokens apart")

    def handle(self, *args, username, name, **options):
        user = User.objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"username: no active user named {username!r}")
        token, raw = token_create(user=user, name=name, by_operator=True)
        self.stderr.write(f"token {token.prefix}… for {username}; it will not be shown again")
        self.stdout.write(raw)
