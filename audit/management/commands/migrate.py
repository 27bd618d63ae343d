"""`migrate` as the owner role when two roles are configured, followed by the app role's grants,
so no migration leaves a table the app cannot use or may alter. One role: Django's own."""

from django.conf import settings
from django.core.management.commands import migrate

from audit.management.commands.db_grant import grants_apply
from config.routers import OWNER, owner_migration_begin


class Command(migrate.Command):
    def handle(self, *args, **options):
        if OWNER not in settings.DATABASES:
            return super().handle(*args, **options)
        # The app role may not create tables: migrations always run as the owner.
        options["database"] = OWNER
        owner_migration_begin()
        super().handle(*args, **options)
        if not (options["plan"] or options["check_unapplied"]):
            self.stdout.write(grants_apply(app_role=None, database=OWNER))
