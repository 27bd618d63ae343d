"""`flush` that may empty the append-only audit tables, but only in a test run (test teardown
flushes the database between transactional tests)."""

from django.conf import settings
from django.core.management.commands import flush

from audit.maintenance import audit_maintenance
from audit.witness import witness_forget


class Command(flush.Command):
    def handle(self, **options):
        if not settings.TESTING:
            return super().handle(**options)
        with audit_maintenance(using=options["database"]):
            witness_forget()  # the trail is wiped on purpose: its high-water mark goes too
            return super().handle(**options)
