import getpass
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from accounts.passwords import password_file_read
from accounts.roles import ROLES
from accounts.services import AccountError, user_create


class Command(BaseCommand):
    help = "Create a Convoy user with a role (password from a prompt or --password-file)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument(
            "--password-file", type=Path, help="read the password from this file's first line"
        )
        parser.add_argument("--email", default="")

    def handle(self, *args, username, role, password_file, email, **options):
        if password_file is not None:
            try:
                password = password_file_read(password_file)
            except OSError as exc:
                raise CommandError(
                    f"--password-file: cannot read {password_file}: {exc.strerror}"
                ) from exc
        elif sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("password: the two entries differ")
        else:
            raise CommandError("password: no terminal to prompt on; use --password-file")
        try:
            user_create(username=username, role=role, password=password, email=email)
        except AccountError as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from exc
        self.stdout.write(f"created {username} ({role})")
