"""Verification of the whole trail in the database (in parallel ranges), and its record."""

import dataclasses
import logging
import multiprocessing
import queue
import threading
import uuid
from collections.abc import Iterator

import psycopg
from django.db import connection, transaction

from audit.keys import key_id, verifying_key
from audit.models import AuditCheckpoint, AuditLink
from audit.record import audit_record
from audit.walk import (
    BROKEN_CHECKPOINTS,
    RECHAINED,
    TRUNCATED_TAIL,
    CheckpointRow,
    Finding,
    Report,
    batched,
    chain_walk,
    checkpoints_check,
)
from audit.witness import witness_read

logger = logging.getLogger(__name__)

# --- Verification -----------------------------------------------------------------------------
VERIFY_CHUNK = 20000
BAD_WITNESS = "bad witness"


def checkpoint_rows(from_checkpoint: int | None) -> list[CheckpointRow]:
    qs = AuditCheckpoint.objects.order_by("number")
    if from_checkpoint is not None:
        qs = qs.filter(number__gte=from_checkpoint)
    return [
        CheckpointRow(c.number, c.size, c.body, c.signature, c.frontier)
        for c in qs.only("number", "size", "body", "signature", "frontier")
    ]


def links_stream(after_seq: int) -> Iterator[tuple]:
    """(seq, event_uuid, content_hash, chain_hash, body or None, order key or None) in seq
    order, fetched in keyset chunks (works in autocommit, e.g. while streaming a download)."""
    pg = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT l.seq, l.event_uuid, l.content_hash, l.chain_hash, e.body, e.txid, e.id "
                "FROM audit_auditlink l LEFT JOIN audit_auditevent e ON e.id = l.event_pk "
                "WHERE l.seq > %s ORDER BY l.seq LIMIT %s",
                [after_seq, VERIFY_CHUNK],
            )
            rows = cursor.fetchall()
            for seq, event_uuid, content, chained, body, txid, pk in rows:
                if pk is None:
                    key = None
                elif pg:
                    key = (txid, pk) if txid is not None else None
                else:
                    key = (0, pk)
                yield seq, event_uuid, content, chained, body, key
            if len(rows) < VERIFY_CHUNK:
                return
            after_seq = rows[-1][0]


def _links_walk(after_seq: int, *, keys: bool) -> Iterator[list[tuple]]:
    """The verifier's read. On PostgreSQL: two server-side cursors in binary format (hashes
    arrive as raw bytes), links by seq and events by id, merged here through a small reorder
    buffer, because two ordered index scans are far cheaper than a million-row join. The order
    key (txid, id) is filled in only when some event is unlinked (the walk needs it then)."""
    if connection.vendor != "postgresql":
        rows = (
            (seq, event_uuid, content, chained, None if body is None else body.encode(), key)
            for seq, event_uuid, content, chained, body, key in links_stream(after_seq)
        )
        yield from batched(rows)
        return
    connection.ensure_connection()
    yield from _prefetched(_links_merge(connection.connection, after_seq, keys=keys))


def _prefetched(rows: Iterator[tuple], *, batch: int = 5000) -> Iterator[list[tuple]]:
    """Run `rows` in a thread and hand them over in batches, so waiting for the database
    overlaps with hashing here (the driver releases the GIL while it waits)."""
    done = object()
    pipe: queue.Queue = queue.Queue(maxsize=8)

    def produce() -> None:
        try:
            chunk = []
            for row in rows:
                chunk.append(row)
                if len(chunk) == batch:
                    pipe.put(chunk)
                    chunk = []
            pipe.put(chunk)
            pipe.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            pipe.put(exc)

    thread = threading.Thread(target=produce, name="audit-verify-read", daemon=True)
    thread.start()
    while (item := pipe.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


def _links_merge(raw, after_seq: int, *, keys: bool, until: int | None = None) -> Iterator[tuple]:
    tag = uuid.uuid4().hex
    until = until if until is not None else 2**62
    with (
        raw.cursor(name=f"audit_links_{tag}", binary=True) as links,
        raw.cursor(name=f"audit_events_{tag}", binary=True) as events,
    ):
        links.execute(
            "SELECT seq, event_pk, content_hash, chain_hash FROM audit_auditlink "
            "WHERE seq > %s AND seq <= %s ORDER BY seq",
            [after_seq, until],
        )
        first = 0
        if after_seq:
            with raw.cursor() as cursor:
                cursor.execute(
                    "SELECT min(event_pk) FROM audit_auditlink WHERE seq > %s AND seq <= %s",
                    [after_seq, until],
                )
                first = cursor.fetchone()[0] or 0
        events.execute(
            "SELECT id, body, txid FROM audit_auditevent WHERE id >= %s ORDER BY id",
            [first],
        )
        waiting: dict[int, tuple] = {}  # events read ahead of their link
        read_up_to, exhausted = first - 1, False
        while batch := links.fetchmany(VERIFY_CHUNK):
            for seq, pk, content, chained in batch:
                event = waiting.pop(pk, None)
                while event is None and not exhausted and read_up_to < pk:
                    rows = events.fetchmany(VERIFY_CHUNK)
                    if not rows:
                        exhausted = True
                        break
                    for row in rows:
                        waiting[row[0]] = row
                    read_up_to = rows[-1][0]
                    event = waiting.pop(pk, None)
                if event is None:  # the link points at an event that is not there
                    yield seq, None, content, chained, None, None
                elif keys:
                    key = (event[2], pk) if event[2] is not None else None
                    yield seq, None, content, chained, event[1].encode(), key
                else:
                    yield seq, None, content, chained, event[1].encode(), None


def _event_ids_fill(report: Report) -> None:
    """Name the event behind findings the walk could only place by seq."""
    wanted = {f.seq for f in report.findings if f.seq is not None and not f.event_id}
    if not wanted:
        return
    ids = dict(AuditLink.objects.filter(seq__in=wanted).values_list("seq", "event_uuid"))
    report.findings = [
        dataclasses.replace(f, event_id=str(ids[f.seq]))
        if f.seq in ids
        and not f.event_id
        and f.kind not in ("truncated tail",)
        and not f.kind.startswith(("bad checkpoint", "broken checkpoint"))
        else f
        for f in report.findings
    ]


def _unlinked() -> list[tuple]:
    pg = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.txid, e.id, e.event_id FROM audit_auditevent e WHERE NOT EXISTS "
            "(SELECT 1 FROM audit_auditlink l WHERE l.event_pk = e.id)"
        )
        rows = cursor.fetchall()
    if pg:
        return [((t, pk) if t is not None else None, u) for t, pk, u in rows]
    return [((0, pk), u) for _, pk, u in rows]


def audit_verify(*, from_checkpoint: int | None = None, public_key=None, jobs: int = 1) -> Report:
    """Check the chain and the checkpoints in the database. Read-only: callers record
    audit.chain.verified themselves (audit_verify_record) when a person asked for it.
    jobs > 1 walks long intact chains in that many processes (PostgreSQL; not from a web
    request or a worker thread, since it forks)."""
    public_key = public_key or verifying_key()
    report = Report(key_id=key_id(public_key))
    outer = connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and not outer:
            with connection.cursor() as cursor:
                # One snapshot for the whole walk, so a sealer running meanwhile is not a finding.
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = checkpoint_rows(from_checkpoint)
        signed = checkpoints_check(rows, public_key, report)
        start = None
        if from_checkpoint is not None:
            start = next((c for c in signed if c.number == from_checkpoint), None)
            if start is None:
                report.findings.append(
                    _no_checkpoint(
                        from_checkpoint, exists=any(r.number == from_checkpoint for r in rows)
                    )
                )
                return report
        unlinked = _unlinked()
        ranges = _ranges_split(signed, jobs) if jobs > 1 and start is None and not unlinked else []
        if ranges:
            _walk_in_parallel(ranges, report)
        else:
            chain_walk(
                _links_walk(start.size - 1 if start else 0, keys=bool(unlinked)),
                signed,
                report,
                unlinked=unlinked,
                start=start,
            )
        _witness_check(report, public_key)
        _event_ids_fill(report)
    return report


def _witness_check(report: Report, public_key) -> None:
    """Compare the chain with the witness outside the database (audit.witness): a chain that
    ends before the witnessed size, or differs from it there, lost or rewrote its newest part
    even when its checkpoints were deleted with it."""
    witness, why = witness_read(public_key)
    if witness is None:
        if why != "no witness yet":
            report.findings.append(Finding(BAD_WITNESS, None, "", why))
        return
    if witness.size > report.size:
        if not any(f.kind == TRUNCATED_TAIL for f in report.findings):
            report.findings.append(
                Finding(
                    TRUNCATED_TAIL,
                    report.size + 1,
                    "",
                    f"the witness signed {witness.size} links at {witness.time} but the chain "
                    f"ends at {report.size}",
                )
            )
        return
    head = AuditLink.objects.filter(seq=witness.size).values_list("chain_hash", flat=True).first()
    already = any(f.kind == RECHAINED for f in report.findings)
    if not already and (head is None or bytes(head).hex() != witness.head):
        report.findings.append(
            Finding(
                RECHAINED,
                witness.size,
                "",
                f"the chain at {witness.size} differs from the witness signed at {witness.time}",
            )
        )


PARALLEL_MIN_LINKS = 50_000  # below this, starting processes costs more than it saves


def _ranges_split(signed: list, jobs: int) -> list[tuple]:
    """Split an intact-looking chain at signed checkpoints into `jobs` spans that can be walked
    independently: each span after the first starts from its checkpoint's head and Merkle
    frontier, which the span before it checks against the same signed statement. A chain with
    holes is walked in one piece, so that every finding keeps its exact serial meaning."""
    if connection.vendor != "postgresql" or not signed:
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), coalesce(max(seq), 0) FROM audit_auditlink")
        count, size = cursor.fetchone()
    if count != size or size < PARALLEL_MIN_LINKS or max(c.size for c in signed) > size:
        return []
    ranges, start = [], None
    for i in range(1, jobs):
        target = size * i // jobs
        cut = max((c for c in signed if c.size <= target), key=lambda c: c.size, default=None)
        if cut is None or (start is not None and cut.size <= start.size) or cut.size >= size:
            continue
        ranges.append((start, cut.size))
        start = cut
    ranges.append((start, size))
    if len(ranges) < 2:
        return []
    return [
        (
            start,
            until,
            [c for c in signed if (start.size if start else 0) < c.size <= until],
        )
        for start, until in ranges
    ]


def _walk_in_parallel(ranges: list[tuple], report: Report) -> None:
    settings_dict = connection.settings_dict
    params = {
        "dbname": settings_dict["NAME"],
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        "host": settings_dict.get("HOST") or None,
        "port": settings_dict.get("PORT") or None,
    }
    jobs = [(params, start, until, signed) for start, until, signed in ranges]
    # fork: the children only open their own connections (never touch the inherited one) and
    # leave through os._exit, so the parent's connection is unharmed.
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        results = pool.map(_walk_range, jobs)
    rechained = False
    for findings, checked, size in results:
        for finding in findings:
            if finding.kind == RECHAINED:
                if rechained:
                    continue
                rechained = True
            report.findings.append(finding)
        report.checked += checked
        report.size = size


def _walk_range(job: tuple) -> tuple[list, int, int]:
    params, start, until, signed = job
    with psycopg.connect(**{k: v for k, v in params.items() if v is not None}) as raw:
        raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        part = Report()
        after = start.size - 1 if start else 0
        rows = _prefetched(_links_merge(raw, after, keys=False, until=until))
        chain_walk(rows, signed, part, start=start)
        raw.rollback()
    return part.findings, part.checked, part.size


def _no_checkpoint(number: int, *, exists: bool):
    why = "does not verify" if exists else "does not exist"
    return Finding(BROKEN_CHECKPOINTS, None, "", f"checkpoint {number} {why}; cannot start there")


def audit_verify_record(*, report: Report, actor=None) -> None:
    audit_record(
        action="audit.chain.verified",
        actor=actor,
        actor_type=None if actor is not None else "system",
        outcome="success" if report.ok else "failure",
        payload={
            "size": report.size,
            "checked": report.checked,
            "checkpoints": report.checkpoints,
            "findings": len(report.findings),
        },
    )
