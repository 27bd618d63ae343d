from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiToken
from accounts.services import token_revoke


class Command(BaseCommand):
    help = "Revoke API tokens by prefix (as listed), or all tokens of a user with --user."

    def add_arguments(self, parser):
        parser.add_argument("prefix", nargs="?", help="the token's prefix, e.g. cvy_AbCdEf")
        parser.add_argument("--user", help="revoke every active token of this user")

    def handle(self, *args, prefix, user, **options):
        tokens = ApiToken.objects.filter(revoked_at__isnull=True)
        if user:
            tokens = tokens.filter(user__username=user)
        elif prefix:
            tokens = tokens.filter(prefix=prefix)
        else:
            raise CommandError("give a token prefix or --user")
        tokens = list(tokens)
        if not tokens:
            raise CommandError("no matching active token")
        for token in tokens:
            token_revoke(token=token, by_operator=True)
            self.stdout.write(f"revoked {token.prefix}… of {token.user.username}")
