"""The one sanctioned way past the append-only triggers: wiping a test database (flush)."""

import contextlib
import threading

from django.db import connections

_state = threading.local()


def _maintenance_open() -> int:
    return int(getattr(_state, "open", False))


def sqlite_functions_register(sender, connection, **kwargs) -> None:
    """The SQLite DELETE triggers ask convoy_audit_maintenance(); a connection without it (the
    sqlite3 shell) cannot delete either, because the trigger then fails to compile."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("convoy_audit_maintenance", 0, _maintenance_open)


@contextlib.contextmanager
def audit_maintenance(*, using: str = "default"):
    connection = connections[using]
    _state.open = True
    try:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET convoy.audit_maintenance = 'on'")
        yield
    finally:
        _state.open = False
        if connection.vendor == "postgresql" and connection.connection is not None:
            with connection.cursor() as cursor:
                cursor.execute("RESET convoy.audit_maintenance")
