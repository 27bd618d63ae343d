from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiToken
from accounts.services import AccountError, token_create, token_days_allowed


class Command(BaseCommand):
    help = "Create an API token for a user and print it once (it is stored only as a hash)."

    def add_arguments(self, parser):
        default, most = token_days_allowed()
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to tell tokens apart")
        parser.add_argument(
            "--scope",
            choices=ApiToken.Scope.values,
            default=ApiToken.Scope.READ,
            help="read (GET and HEAD only, the default) or write (everything the user may do)",
        )
        parser.add_argument(
            "--days",
            type=int,
            default=default,
            help=f"lifetime, at most {most} (default {default})",
        )

    def handle(self, *args, username, name, scope, days, **options):
        user = User.objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"username: no active user named {username!r}")
        try:
            token, raw = token_create(
                user=user, name=name, scope=scope, days=days, by_operator=True
            )
        except AccountError as exc:
            raise CommandError(f"--{exc.field}: {exc.message}") from exc
        self.stderr.write(
            f"token {token.prefix}… for {username}, scope {token.scope}, expires"
            f" {token.expires_at:%Y-%m-%d %H:%M} UTC; it will not be shown again"
        )
        self.stdout.write(raw)
