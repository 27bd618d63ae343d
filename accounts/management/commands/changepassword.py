"""`manage.py changepassword`: Django's command, but the password is stored by Convoy's service,
so the person's API tokens are revoked and the change is audited with it (Django's own command
saved the hash and nothing else: tokens that leaked with the old password kept working).

It replaces `django.contrib.auth`'s command because `accounts` comes first in INSTALLED_APPS."""

from pathlib import Path

from django.contrib.auth.management.commands import changepassword
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from accounts.passwords import password_file_read, user_password_set_by_operator
from accounts.services import AccountError

MAX_TRIES = 3


class Command(changepassword.Command):
    help = (
        "Change a user's password (from a prompt or --password-file); their API tokens are "
        "revoked and the change is audited."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--password-file", type=Path, help="read the password from this file's first line"
        )

    def handle(self, *args, **options):
        username = options["username"] or changepassword.getpass.getuser()
        user = User.objects.using(options["database"]).filter(username=username).first()
        if user is None:
            raise CommandError(f"user '{username}' does not exist")
        password = self._password(user, options["password_file"])
        try:
            revoked = user_password_set_by_operator(
                user=user, new_password=password, command="changepassword"
            )
        except AccountError as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from exc
        tokens = f"; {revoked} API token{'s' if revoked != 1 else ''} revoked" if revoked else ""
        return f"Password changed successfully for user '{user}'{tokens}"

    def _password(self, user: User, password_file: Path | None) -> str:
        """The new password: the file's first line (`password_file_read`), or asked twice on
        the terminal (three tries, each checked by the validators as Django's command does)."""
        if password_file is not None:
            try:
                return password_file_read(password_file)
            except OSError as exc:
                raise CommandError(
                    f"--password-file: cannot read {password_file}: {exc.strerror}"
                ) from exc
        self.stdout.write(f"Changing password for user '{user}'")
        for _ in range(MAX_TRIES):
            first = self._get_pass()
            if first != self._get_pass("Password (again): "):
                self.stdout.write("Passwords do not match. Please try again.")
                continue
            try:
                validate_password(first, user)
            except ValidationError as err:
                self.stderr.write("\n".join(err.messages))
                continue
            return first
        raise CommandError(f"Aborting password change for user '{user}' after {MAX_TRIES} attempts")
