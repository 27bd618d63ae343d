"""The event, link and checkpoint tables refuse every change but INSERT, even to a superuser
who switches replication mode, as long as the triggers stand."""

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent, AuditLink
from audit.record import audit_record
from audit.seal import audit_seal
from audit.verify import audit_verify
from tests import support
from tests.audit.trail import trail_seal

STATEMENTS = {
    "update": "UPDATE {t} SET {col} = {col}",
    "delete": "DELETE FROM {t}",
    "truncate": "TRUNCATE {t} CASCADE",
}
COLUMNS = {"audit_auditevent": "body", "audit_auditlink": "seq", "audit_auditcheckpoint": "body"}


@pytest.fixture
def sealed(transactional_db, settings):
    settings.AUDIT_CHECKPOINT_EVERY = 1
    audit_record(action="people.logout", actor_type="system")
    trail_seal()


@pytest.mark.parametrize("table", list(COLUMNS))
@pytest.mark.parametrize("verb", list(STATEMENTS))
def test_postgres_refuses_update_delete_truncate_also_under_replica(sealed, verb, table):
    sql = STATEMENTS[verb].format(t=table, col=COLUMNS[table])
    with psycopg.connect(support.test_database_url(), autocommit=True) as conn:
        for role in ("origin", "replica"):
            conn.execute(f"SET session_replication_role = {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(sql)
        count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
    assert count >= 1


def test_postgres_stamps_the_real_transaction_id_whatever_the_insert_says(transactional_db):
    event = audit_record(action="people.logout", actor_type="system")
    with connection.cursor() as cursor:
        cursor.execute("SELECT txid FROM audit_auditevent WHERE id = %s", [event.pk])
        stamped = cursor.fetchone()[0]
    assert stamped > 0
    with psycopg.connect(support.test_database_url()) as conn:
        conn.execute(
            "INSERT INTO audit_auditevent (event_id, occurred_at, action, outcome, actor_type, "
            "actor_id, actor_display, on_behalf_of, target_type, target_id, body, txid) "
            "VALUES (gen_random_uuid(), now(), 'x.y.z', 'success', 'system', '', '', '', '', '', "
            "'{}', 1)"
        )
        own = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        forged = conn.execute("SELECT txid FROM audit_auditevent WHERE action = 'x.y.z'").fetchone()
        conn.rollback()
    assert forged[0] == own != 1


# SQLite's REPLACE deletes the row it collides with without firing the DELETE trigger (recursive
# triggers are off by default): each puts an edited copy of the first row back over it.
KEYS = {"audit_auditevent": "id", "audit_auditlink": "seq", "audit_auditcheckpoint": "number"}
EDITS = {
    "audit_auditevent": "body = '{}'",
    "audit_auditlink": "chain_hash = x'00'",
    "audit_auditcheckpoint": "body = '{}'",
}
REPLACES = (
    "REPLACE INTO {t} SELECT * FROM edited",
    "INSERT OR REPLACE INTO {t} SELECT * FROM edited",
)


@pytest.mark.shapes("embedded")
@pytest.mark.parametrize("table", list(COLUMNS))
def test_sqlite_refuses_update_delete_and_replace(db, table, settings):
    settings.AUDIT_CHECKPOINT_EVERY = 1
    audit_record(action="people.logout", actor_type="system")
    audit_seal()
    key = KEYS[table]
    select_first = f"SELECT * FROM {table} WHERE {key} = (SELECT min({key}) FROM {table})"  # noqa: S608
    with connection.cursor() as cursor:
        before = cursor.execute(select_first).fetchone()
        cursor.execute(f"CREATE TEMP TABLE edited AS {select_first}")
        cursor.execute(f"UPDATE edited SET {EDITS[table]}")  # noqa: S608
    try:
        for sql in (STATEMENTS["update"], STATEMENTS["delete"], *REPLACES):
            with (
                pytest.raises(DatabaseError, match="append-only"),
                transaction.atomic(),
                connection.cursor() as cursor,
            ):
                cursor.execute(sql.format(t=table, col=COLUMNS[table]))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE temp.edited")
    with connection.cursor() as cursor:
        assert cursor.execute(select_first).fetchone() == before
    assert AuditEvent.objects.count() == 1
    assert audit_verify().ok


@pytest.mark.shapes("embedded")
def test_sqlite_links_each_event_as_it_is_recorded(db):
    with transaction.atomic():
        audit_record(action="people.logout", actor_type="system")
        try:
            with transaction.atomic():
                audit_record(action="people.login.failed", actor_type="system")
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
        audit_record(action="people.logout", actor_type="system")
    assert list(AuditLink.objects.values_list("seq", flat=True)) == [1, 2]
    assert not AuditEvent.objects.filter(action="people.login.failed").exists()
    assert audit_verify().ok
