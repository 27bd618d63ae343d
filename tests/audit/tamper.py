"""Tampering as a database superuser would: in a separate connection, with the append-only
triggers switched off for the statement and switched back on (ALWAYS) afterwards."""

import psycopg

from tests.support import test_database_url

TABLES = ("audit_auditevent", "audit_auditlink", "audit_auditcheckpoint")


def tamper(*statements: str | tuple[str, tuple], params: tuple = ()) -> None:
    """Each statement is SQL, or (SQL, parameters); `params` go with plain SQL strings."""
    with psycopg.connect(test_database_url(), autocommit=True) as conn:
        for t in TABLES:
            conn.execute(f"ALTER TABLE {t} DISABLE TRIGGER ALL")
        try:
            for statement in statements:
                sql, args = statement if isinstance(statement, tuple) else (statement, params)
                conn.execute(sql, args if "%s" in sql else None)
        finally:
            for t in TABLES:
                conn.execute(f"ALTER TABLE {t} ENABLE TRIGGER ALL")
                for name in ("no_change", "no_truncate"):
                    conn.execute(f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {t}_{name}")
            conn.execute("ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_auditevent_txid")
