"""The audit trail's writes: recording events in the caller's transaction, sealing them into the
hash chain, signing checkpoints, verifying, and exporting."""

import csv
import hashlib
import hmac
import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import QuerySet

from audit import chain
from audit.context import current_request
from audit.keys import key_id, public_key_pem, public_key_raw, signing_key, verifying_key
from audit.models import AuditCheckpoint, AuditEvent
from audit.verify import CheckpointRow, Report, batched, chain_walk, checkpoints_check

logger = logging.getLogger(__name__)

SCHEMA = "convoy.audit/1"
OUTCOMES = ("success", "failure", "denied", "error")
ACTOR_TYPES = ("human", "agent", "system", "api_token")
CONTEXT_KEYS = ("campaign_id", "run_id", "variant_id", "sandbox_id", "request_id")


class AuditWriteError(Exception):
    """The event could not be recorded; the change it describes must not happen."""


def audit_hmac(value: str) -> str:
    """A value that must be matchable later but never stored (a token, a command's secret
    argument): `hmac-sha256:<hex>` keyed by SECRET_KEY, as Vault's audit devices do."""
    digest = hmac.new(settings.SECRET_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{digest}"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _actor(actor, actor_type: str | None, on_behalf_of, ctx) -> dict:
    if actor is None:
        kind, ident, display = actor_type or "system", "", actor_type or "system"
    else:
        token = getattr(actor, "_convoy_api_token", None)
        kind = actor_type or ("api_token" if token is not None else "human")
        ident, display = str(actor.pk), actor.get_username()
    behalf = on_behalf_of.get_username() if hasattr(on_behalf_of, "get_username") else on_behalf_of
    return {
        "type": kind,
        "id": ident,
        "display": display,
        "ip": ctx.ip if ctx else "",
        "user_agent": ctx.user_agent if ctx else "",
        "on_behalf_of": behalf or "",
    }


def _target(target) -> dict:
    if target is None:
        return {"type": "", "id": "", "display": ""}
    if isinstance(target, dict):
        return {
            "type": target.get("type", ""),
            "id": str(target.get("id", "")),
            "display": target.get("display", ""),
        }
    if isinstance(target, models.Model):
        return {
            "type": target._meta.label_lower,
            "id": str(target.pk),
            "display": str(target)[:200],
        }
    raise TypeError(f"audit target must be a model instance or a dict, got {type(target)!r}")


def audit_record(
    *,
    action: str,
    actor=None,
    actor_type: str | None = None,
    target=None,
    outcome: str = "success",
    context: dict | None = None,
    payload: dict | None = None,
    changes: dict | None = None,
    reason: str = "",
    on_behalf_of=None,
) -> AuditEvent:
    """Write one event in the caller's transaction; raise AuditWriteError if it cannot be."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    if actor_type is not None and actor_type not in ACTOR_TYPES:
        raise ValueError(f"actor_type must be one of {ACTOR_TYPES}, got {actor_type!r}")
    ctx = current_request.get()
    context = {k: v for k, v in (context or {}).items() if v is not None}
    unknown = set(context) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"unknown audit context keys: {sorted(unknown)}")
    if ctx and "request_id" not in context:
        context["request_id"] = ctx.request_id
    event_id = uuid.uuid4()
    now = datetime.now(UTC)
    body = {
        "schema": SCHEMA,
        "event_id": str(event_id),
        "occurred_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "action": action,
        "outcome": outcome,
        "actor": _actor(actor, actor_type, on_behalf_of, ctx),
        "target": _target(target),
        "context": context,
        "reason": reason,
        "changes": changes or {},
        "payload": payload or {},
    }
    event = AuditEvent(
        event_id=event_id,
        occurred_at=now,
        action=action,
        outcome=outcome,
        actor_type=body["actor"]["type"],
        actor_id=body["actor"]["id"],
        actor_display=body["actor"]["display"],
        on_behalf_of=body["actor"]["on_behalf_of"],
        target_type=body["target"]["type"],
        target_id=body["target"]["id"],
        campaign_id=context.get("campaign_id"),
        run_id=context.get("run_id"),
        variant_id=context.get("variant_id"),
        sandbox_id=context.get("sandbox_id"),
        body=canonical_json(body),
    )
    try:
        # No savepoint: if the insert fails, the caller's whole transaction must roll back.
        with transaction.atomic(savepoint=False):
            _event_insert(event)
            if connection.vendor == "sqlite":
                # SQLite serialises writers, so this transaction already holds the only write
                # lock: link the event right here (rolled back with it, if it is). Signing is
                # left to the periodic task, so a key problem never blocks a change.
                _seal_batch(limit=1000, checkpoints=False)
    except Exception as exc:
        raise AuditWriteError(f"could not record {action}: {exc}") from exc
    return event


_INSERT = (
    "INSERT INTO audit_auditevent (event_id, occurred_at, action, outcome, actor_type, actor_id, "
    "actor_display, on_behalf_of, target_type, target_id, campaign_id, run_id, variant_id, "
    "sandbox_id, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "RETURNING id"
)


def _event_insert(event: AuditEvent) -> None:
    """One plain INSERT (the ORM's save costs several times more per event; this is the path
    every audited change takes)."""
    ops = connection.ops
    event_id = event.event_id if connection.features.has_native_uuid_field else event.event_id.hex
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT,
            [
                event_id,
                ops.adapt_datetimefield_value(event.occurred_at),
                event.action,
                event.outcome,
                event.actor_type,
                event.actor_id,
                event.actor_display,
                event.on_behalf_of,
                event.target_type,
                event.target_id,
                event.campaign_id,
                event.run_id,
                event.variant_id,
                event.sandbox_id,
                event.body,
            ],
        )
        event.pk = cursor.fetchone()[0]
    event._state.adding = False
    event._state.db = connection.alias


def audit_denied(*, actor, capability: str, target=None, path: str = "") -> None:
    """Record a refused attempt. It commits even though the request itself fails."""
    audit_record(
        action="people.permission.denied",
        actor=actor,
        outcome="denied",
        target=target,
        payload={"capability": capability, "path": path},
    )


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


def _seal_batch(*, limit: int = SEAL_BATCH, checkpoints: bool = True) -> tuple[int, int, int]:
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
            n, m, size = _seal_batch()
        linked, made = linked + n, made + m
        if n < SEAL_BATCH or (limit is not None and linked >= limit):
            return SealResult(linked, made, size)


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


# --- Verification -----------------------------------------------------------------------------
VERIFY_CHUNK = 20000


def _checkpoint_rows(from_checkpoint: int | None) -> list[CheckpointRow]:
    qs = AuditCheckpoint.objects.order_by("number")
    if from_checkpoint is not None:
        qs = qs.filter(number__gte=from_checkpoint)
    return [
        CheckpointRow(c.number, c.size, c.body, c.signature, c.frontier)
        for c in qs.only("number", "size", "body", "signature", "frontier")
    ]


def _links_stream(after_seq: int) -> Iterator[tuple]:
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
            for seq, event_uuid, content, chained, body, key in _links_stream(after_seq)
        )
        yield from batched(rows)
        return
    connection.ensure_connection()
    yield from _prefetched(_links_merge(connection.connection, after_seq, keys=keys))


def _prefetched(rows: Iterator[tuple], *, batch: int = 5000) -> Iterator[list[tuple]]:
    """Run `rows` in a thread and hand them over in batches, so waiting for the database
    overlaps with hashing here (the driver releases the GIL while it waits)."""
    import queue
    import threading

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
    import dataclasses

    from audit.models import AuditLink

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
        rows = _checkpoint_rows(from_checkpoint)
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
        _event_ids_fill(report)
    return report


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
    import multiprocessing

    from audit.verify import RECHAINED

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
    import psycopg

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
    from audit.verify import BROKEN_CHECKPOINTS, Finding

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


# --- Export -----------------------------------------------------------------------------------
def audit_export_record(*, actor, fmt: str, query: str = "") -> None:
    audit_record(
        action="audit.events.exported",
        actor=actor,
        payload={"format": fmt, "query": query},
    )


def bundle_lines() -> Iterator[str]:
    """The whole sealed trail as NDJSON: a header with the public key, the signed checkpoints,
    then every link with its event's stored body (as a JSON string, so its bytes survive)."""
    key = verifying_key()
    yield (
        canonical_json(
            {
                "type": "header",
                "schema": BUNDLE_SCHEMA,
                "exported_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "key_id": key_id(key),
                "public_key": public_key_raw(key).hex(),
                "public_key_pem": public_key_pem(key),
            }
        )
        + "\n"
    )
    for row in _checkpoint_rows(None):
        yield (
            canonical_json(
                {
                    "type": "checkpoint",
                    "number": row.number,
                    "size": row.size,
                    "body": row.body,
                    "signature": row.signature,
                    "frontier": row.frontier,
                }
            )
            + "\n"
        )
    for seq, event_uuid, content, chained, body, _key in _links_stream(0):
        yield (
            canonical_json(
                {
                    "type": "event",
                    "seq": seq,
                    "event_id": str(uuid.UUID(str(event_uuid))),
                    "content_hash": bytes(content).hex(),
                    "chain_hash": bytes(chained).hex(),
                    "body": body,
                }
            )
            + "\n"
        )


def audit_verify_bundle(*, lines, public_key=None) -> Report:
    """Verify an exported bundle offline. Pass the auditor's own copy of the public key: the
    one inside the bundle only proves the bundle is self-consistent."""
    from audit.keys import public_key_load

    header, rows, events = None, [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            kind = item["type"]
            if kind == "header":
                header = item
            elif kind == "checkpoint":
                if not all(isinstance(item[k], str) for k in ("body", "signature")):
                    raise TypeError("body and signature must be strings")
                rows.append(
                    CheckpointRow(
                        int(item["number"]),
                        int(item["size"]),
                        item["body"],
                        item["signature"],
                        list(item["frontier"]),
                    )
                )
            elif kind == "event":
                if not isinstance(item["body"], str):
                    raise TypeError("body must be a string")
                events.append(
                    (
                        int(item["seq"]),
                        str(item["event_id"]),
                        bytes.fromhex(item["content_hash"]),
                        bytes.fromhex(item["chain_hash"]),
                        item["body"].encode(),
                        None,
                    )
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"bundle line {number}: not a bundle record ({exc})") from exc
    if header is None:
        raise ValueError("bundle: no header line (is this an audit bundle?)")
    if public_key is None:
        public_key = public_key_load(header["public_key"].encode())
    report = Report(key_id=key_id(public_key))
    signed = checkpoints_check(rows, public_key, report)
    chain_walk(batched(events), signed, report)
    return report


CSV_COLUMNS = (
    "event_id",
    "occurred_at",
    "action",
    "outcome",
    "actor_type",
    "actor",
    "on_behalf_of",
    "actor_ip",
    "target_type",
    "target_id",
    "campaign_id",
    "sandbox_id",
    "request_id",
    "body",
)


def _csv_cell(value) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet would run a cell starting with these as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def csv_lines(events: QuerySet) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        value = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return value

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for event in events.iterator(chunk_size=2000):
        body = json.loads(event.body)
        writer.writerow(
            [
                _csv_cell(v)
                for v in (
                    event.event_id,
                    body["occurred_at"],
                    event.action,
                    event.outcome,
                    event.actor_type,
                    event.actor_display,
                    event.on_behalf_of,
                    body["actor"].get("ip", ""),
                    event.target_type,
                    event.target_id,
                    event.campaign_id,
                    event.sandbox_id,
                    body["context"].get("request_id", ""),
                    event.body,
                )
            ]
        )
        yield flush()


# --- Access -----------------------------------------------------------------------------------
def audit_view_record(*, actor, what: str, query: str = "", target=None, count=None) -> None:
    payload = {"view": what, "query": query}
    if count is not None:
        payload["count"] = count
    audit_record(action="audit.events.viewed", actor=actor, target=target, payload=payload)
