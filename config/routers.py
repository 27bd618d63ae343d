"""With two PostgreSQL roles (CONVOY_DATABASE_OWNER_URL), the `owner` alias connects as the role
that owns the tables; the app's own work goes through `default`, a role that owns nothing."""

OWNER = "owner"

_migrating_as_owner = False


def owner_migration_begin() -> None:
    """For the rest of this `migrate` process every query goes through the owner's connection:
    a data migration's `Model.objects` would otherwise open a second, app-role connection, which
    waits forever on the tables the migration's own transaction has locked."""
    global _migrating_as_owner
    _migrating_as_owner = True


class OwnerRouter:
    def db_for_read(self, model, **hints):
        return OWNER if _migrating_as_owner else None

    def db_for_write(self, model, **hints):
        return OWNER if _migrating_as_owner else None
