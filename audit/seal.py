"""Sealing: linking recorded events into the hash chain, signing checkpoints over it, and
moving the witness (audit.witness) to the new head."""

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection, transaction

from audit import chain
from audit.chain import canonical_json
from audit.keys import key_id, signing_key
from audit.models import AuditCheckpoint, AuditEvent
from audit.witness import witness_advance

logger = logging.getLogger(__name__)

# --- Sealing ----------------------------------------------------------------------------------
SEAL_LOCK = 0x636F6E766F79  # advisory lock key: "convoy"
SEAL_BATCH = 5000
CHECKPOINT_SCHEMA = "convoy.audit.checkpoint/1"
BUNDLE_SCHEMA = "convoy.audit.bundle/1"


@dataclass(frozen=True)
class SealResult:
    linked: int
    checkpoints: int
    size: int
    busy: bool = False


def _head(cursor) -> tuple[int, bytes, tuple[int, int] | None]:
    """(seq, chain hash, order key of its event) of the chain's last link."""
    cursor.execute(
        "SELECT l.seq, l.chain_hash, e.txid, e.id FROM audit_auditlink l "
        "LEFT JOIN audit_auditevent e ON e.id = l.event_pk ORDER BY l.seq DESC LIMIT 1"
    )
    row = cursor.fetchone()
    if row is None:
        return 0, chain.GENESIS, None
    seq, head, txid, pk = row
    if pk is None:
        raise RuntimeError(f"the event linked at seq {seq} is missing; run manage.py audit_verify")
    return seq, bytes(head), (txid or 0, pk)


def _pending(cursor, after: tuple[int, int] | None, limit: int) -> list[tuple]:
    if connection.vendor == "postgresql":
        # Only rows of transactions older than every running one: nothing can still commit
        # below them, so the order (txid, id) never has to change after we link.
        txid, pk = after or (-1, -1)
        cursor.execute(
            "SELECT id, event_id, body FROM audit_auditevent "
            "WHERE txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint "
            "AND (txid, id) > (%s, %s) ORDER BY txid, id LIMIT %s",
            [txid, pk, limit],
        )
    else:
        pk = after[1] if after else 0
        cursor.execute(
            "SELECT id, event_id, body FROM audit_auditevent WHERE id > %s ORDER BY id LIMIT %s",
            [pk, limit],
        )
    return cursor.fetchall()


def _links_write(cursor, rows: list[tuple]) -> None:
    columns = "seq, event_pk, event_uuid, content_hash, chain_hash"
    if connection.vendor == "postgresql":
        with cursor.copy(f"COPY audit_auditlink ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        cursor.executemany(
            f"INSERT INTO audit_auditlink ({columns}) VALUES (%s, %s, %s, %s, %s)",  # noqa: S608
            rows,
        )


def seal_batch(*, limit: int = SEAL_BATCH, checkpoints: bool = True) -> tuple[int, int, int]:
    """Link up to `limit` finished events, then write the checkpoints now due. The caller holds
    the sealer lock (PostgreSQL) or the database's write lock (SQLite)."""
    with connection.cursor() as cursor:
        seq, prev, after = _head(cursor)
        rows = []
        for pk, event_uuid, body in _pending(cursor, after, limit):
            seq += 1
            content = chain.content_hash(body.encode())
            prev = chain.chain_hash(prev, seq, content)
            rows.append((seq, pk, event_uuid, content, prev))
        if rows:
            _links_write(cursor, rows)
        made = _checkpoints_due(cursor, size=seq) if checkpoints else 0
    return len(rows), made, seq


def audit_seal(*, wait: bool = True, limit: int | None = None) -> SealResult:
    """Link every finished event into the chain and sign the checkpoints that are due. Safe to
    run from several processes at once: one sealer holds the lock, the others wait or skip."""
    linked = made = size = 0
    while True:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    if wait:
                        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEAL_LOCK])
                    else:
                        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEAL_LOCK])
                        if not cursor.fetchone()[0]:
                            return SealResult(linked, made, size, busy=True)
            n, m, size = seal_batch()
            # The witness moves only once the links are committed (never for rows that may
            # still roll back, e.g. inside a caller's transaction).
            transaction.on_commit(lambda size=size: _witness_advance(size))
        linked, made = linked + n, made + m
        if n < SEAL_BATCH or (limit is not None and linked >= limit):
            return SealResult(linked, made, size)


def _witness_advance(size: int) -> None:
    try:
        witness_advance(size=size)
    except OSError:
        logger.exception("the audit witness could not be written; tail truncation goes unseen")


# --- Checkpoints ------------------------------------------------------------------------------
def _checkpoints_due(cursor, *, size: int) -> int:
    last = AuditCheckpoint.objects.order_by("-number").first()
    every = settings.AUDIT_CHECKPOINT_EVERY
    made = 0
    while size - (last.size if last else 0) >= every:
        last = _checkpoint_write(cursor, last=last, size=(last.size if last else 0) + every)
        made += 1
    if size > (last.size if last else 0):
        if last is not None:
            since = last.created_at
        else:
            since = AuditEvent.objects.filter(link__seq=1).values_list("occurred_at", flat=True)[0]
        if (datetime.now(UTC) - since).total_seconds() >= settings.AUDIT_CHECKPOINT_SECONDS:
            _checkpoint_write(cursor, last=last, size=size)
            made += 1
    return made


def _checkpoint_write(cursor, *, last: AuditCheckpoint | None, size: int) -> AuditCheckpoint:
    frontier = chain.MerkleFrontier.from_json(last.frontier) if last else chain.MerkleFrontier()
    cursor.execute(
        "SELECT content_hash FROM audit_auditlink WHERE seq > %s AND seq <= %s ORDER BY seq",
        [frontier.size, size],
    )
    frontier.extend([bytes(content) for (content,) in cursor.fetchall()])
    cursor.execute("SELECT chain_hash FROM audit_auditlink WHERE seq = %s", [size])
    head = bytes(cursor.fetchone()[0])
    key = signing_key()
    now = datetime.now(UTC)
    number = (last.number + 1) if last else 1
    statement = {
        "schema": CHECKPOINT_SCHEMA,
        "number": number,
        "size": size,
        "head": head.hex(),
        "root": frontier.root().hex(),
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "prev": hashlib.sha256(last.body.encode()).hexdigest() if last else "0" * 64,
        "key_id": key_id(key.public_key()),
    }
    body = canonical_json(statement)
    return AuditCheckpoint.objects.create(
        number=number,
        size=size,
        body=body,
        signature=key.sign(body.encode()).hex(),
        frontier=frontier.to_json(),
        created_at=now,
    )
