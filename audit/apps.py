from django.apps import AppConfig
from django.db.backends.signals import connection_created


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from audit.maintenance import sqlite_functions_register

        connection_created.connect(sqlite_functions_register, dispatch_uid="convoy-audit-sqlite")
