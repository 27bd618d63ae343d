"""The audit app: registers the SQLite functions the append-only triggers call."""

from django.apps import AppConfig
from django.db.backends.signals import connection_created

from audit.maintenance import sqlite_functions_register


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        connection_created.connect(sqlite_functions_register, dispatch_uid="convoy-audit-sqlite")
