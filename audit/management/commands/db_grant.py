"""Give the app's PostgreSQL role what it needs and no more: INSERT and SELECT only on the audit
tables. Idempotent; `migrate` runs it after every migration when two roles are configured."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.models import AuditCheckpoint, AuditEvent, AuditLink
from config.routers import OWNER
from core.postgres.roles import RoleError, roles_grant

APPEND_ONLY = tuple(m._meta.db_table for m in (AuditEvent, AuditLink, AuditCheckpoint))


def grants_apply(*, app_role: str | None, database: str | None) -> str:
    """Grant and return the one-line summary; CommandError names the option at fault."""
    if database is None:
        database = OWNER if OWNER in settings.DATABASES else "default"
    if database not in settings.DATABASES:
        raise CommandError(f"--database: no database alias {database!r}")
    role = app_role or settings.DATABASES["default"].get("USER")
    if not role:
        raise CommandError("--app-role: required (DATABASE_URL names no user)")
    try:
        result = roles_grant(app_role=role, append_only=APPEND_ONLY, using=database)
    except RoleError as exc:
        raise CommandError(f"--app-role: {exc}") from exc
    return (
        f"granted {result.app_role}: rows of {result.tables} tables, "
        f"INSERT and SELECT only on {', '.join(result.append_only)}, "
        f"{result.sequences} sequences"
    )


class Command(BaseCommand):
    help = (
        "Grant the app role (DATABASE_URL's user) row privileges on Convoy's tables and only "
        "INSERT and SELECT on the audit tables, connecting as the owner "
        "(CONVOY_DATABASE_OWNER_URL). Safe to rerun; migrate runs it when both URLs are set."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--app-role", metavar="NAME", help="the role to grant to (default: DATABASE_URL's user)"
        )
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            help="the connection to grant through (default: 'owner' when configured)",
        )

    def handle(self, *args, app_role, database, **options):
        self.stdout.write(grants_apply(app_role=app_role, database=database))
