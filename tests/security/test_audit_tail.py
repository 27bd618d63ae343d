"""Deleting the newest audit events (with their links and checkpoints) is detected through the
witness kept outside the database; verification reports, never crashes; SQLite's triggers
refuse raw UPDATE/DELETE, and a client that defines the maintenance function to get past them
is caught by verification."""

import sqlite3

import pytest
from django.conf import settings
from django.db import connection

from audit.models import AuditCheckpoint, AuditEvent, AuditLink
from audit.record import audit_record
from audit.verify import audit_verify
from audit.witness import witness_path
from tests.audit.trail import trail_seal

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sealed(settings):
    """Ten sealed events, checkpoints at 4 and 8, and the witness at 10."""
    settings.AUDIT_CHECKPOINT_EVERY = 4
    settings.AUDIT_CHECKPOINT_SECONDS = 3600
    for n in range(10):
        audit_record(action="people.logout", actor_type="system", payload={"n": n})
    trail_seal()
    assert audit_verify().ok
    assert witness_path().exists()
    assert oct(witness_path().stat().st_mode & 0o777) == "0o600"
    return dict(AuditLink.objects.values_list("seq", "event_id"))


def _kinds() -> list[tuple]:
    return [(f.kind, f.seq) for f in audit_verify().findings]


@pytest.mark.shapes("production")
def test_truncating_events_links_and_checkpoints_together_is_detected(sealed):
    from tests.audit.tamper import tamper

    tail = [sealed[s] for s in (7, 8, 9, 10)]
    tamper(
        "DELETE FROM audit_auditcheckpoint WHERE size >= 8",
        "DELETE FROM audit_auditlink WHERE seq >= 7",
        ("DELETE FROM audit_auditevent WHERE id = ANY(%s)", (tail,)),
    )
    # Without the witness this trail is a shorter one that checks out: 6 links, checkpoint 4.
    assert AuditCheckpoint.objects.count() == 1 and AuditLink.objects.count() == 6
    assert _kinds() == [("truncated tail", 7)]
    assert "witness signed 10 links" in audit_verify().findings[0].detail


@pytest.mark.shapes("production")
def test_deleting_only_the_newest_events_is_reported_not_a_traceback(sealed):
    from tests.audit.tamper import tamper

    tamper(("DELETE FROM audit_auditevent WHERE id = ANY(%s)", ([sealed[9], sealed[10]],)))
    kinds = _kinds()
    assert ("deleted event", 9) in kinds and ("deleted event", 10) in kinds


_KEPT = (
    "id, event_id, occurred_at, action, outcome, actor_type, actor_id, actor_display, "
    "on_behalf_of, target_type, target_id, campaign_id, run_id, variant_id, sandbox_id, txid"
)
EVENT_COLUMNS = f"{_KEPT}, body"
EVENT_EDITED = f"{_KEPT}, '{{}}'"


@pytest.mark.shapes("embedded")
def test_sqlite_triggers_refuse_raw_update_and_delete_from_another_client(sealed):
    path = settings.DATABASES["default"]["TEST"]["NAME"]
    connection.close()
    raw = sqlite3.connect(path, timeout=30)
    try:
        for sql in (
            # Rows that exist whatever ran before (ids and seqs are not reset between tests).
            "UPDATE audit_auditevent SET body = '{}'"
            " WHERE id = (SELECT min(id) FROM audit_auditevent)",
            "UPDATE audit_auditlink SET chain_hash = x'00'"
            " WHERE seq = (SELECT max(seq) FROM audit_auditlink)",
            "DELETE FROM audit_auditevent WHERE id = (SELECT max(id) FROM audit_auditevent)",
            "DELETE FROM audit_auditlink WHERE seq = (SELECT max(seq) FROM audit_auditlink)",
            "DELETE FROM audit_auditcheckpoint",
            # REPLACE deletes the row it collides with without firing the DELETE trigger.
            f"REPLACE INTO audit_auditevent ({EVENT_COLUMNS}) SELECT {EVENT_EDITED}"  # noqa: S608
            " FROM audit_auditevent WHERE id = (SELECT min(id) FROM audit_auditevent)",
            f"INSERT OR REPLACE INTO audit_auditevent ({EVENT_COLUMNS}) SELECT {EVENT_EDITED}"  # noqa: S608
            " FROM audit_auditevent WHERE id = (SELECT min(id) FROM audit_auditevent)",
            "INSERT OR REPLACE INTO audit_auditlink SELECT * FROM audit_auditlink"
            " WHERE seq = (SELECT max(seq) FROM audit_auditlink)",
        ):
            with pytest.raises(sqlite3.DatabaseError):
                raw.execute(sql)
        raw.rollback()
    finally:
        raw.close()
    assert AuditEvent.objects.count() == 10 and audit_verify().ok


@pytest.mark.shapes("embedded")
def test_sqlite_bypass_through_the_maintenance_function_is_caught(sealed):
    """SQLite is not tamper-resistant against someone who can write the file: defining
    convoy_audit_maintenance() (or dropping the triggers) gets past them. Verification with
    the witness still names the truncation."""
    path = settings.DATABASES["default"]["TEST"]["NAME"]
    connection.close()
    raw = sqlite3.connect(path, timeout=30)
    try:
        raw.create_function("convoy_audit_maintenance", 0, lambda: 1)
        raw.execute("DELETE FROM audit_auditcheckpoint WHERE size >= 8")
        raw.execute("DELETE FROM audit_auditlink WHERE seq >= 7")
        raw.executemany(
            "DELETE FROM audit_auditevent WHERE id = ?", [(sealed[s],) for s in (7, 8, 9, 10)]
        )
        raw.commit()
    finally:
        raw.close()
    assert AuditLink.objects.count() == 6
    assert _kinds() == [("truncated tail", 7)]
