"""Recording: one canonical-JSON event in the caller's transaction; refusals; reads of the trail."""

import hashlib
import hmac
import logging
import uuid
from datetime import UTC, datetime

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction

from audit.chain import canonical_json
from audit.context import current_request
from audit.models import AuditEvent
from audit.seal import seal_batch
from core.rows import row_stored

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


def _actor(actor, actor_type: str | None, on_behalf_of, ctx) -> dict:
    if actor is None:
        kind, ident, display = actor_type or "system", "", actor_type or "system"
    else:
        token = getattr(actor, "_convoy_api_token", None)
        kind = actor_type or ("api_token" if token is not None else "human")
        ident, display = str(actor.pk), actor.get_username()
    behalf = on_behalf_of.get_username() if hasattr(on_behalf_of, "get_username") else on_behalf_of
    found = {
        "type": kind,
        "id": ident,
        "display": display,
        "ip": ctx.ip if ctx else "",
        "user_agent": ctx.user_agent if ctx else "",
        "on_behalf_of": behalf or "",
    }
    if kind == "api_token" and token is not None:
        found["token"] = f"{token.pk}:{token.prefix}"  # which of the user's tokens acted
    return found


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


def audit_event_build(
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
    """One complete event, not yet written: its canonical body is final."""
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
    return event


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
    built = audit_event_build(
        action=action,
        actor=actor,
        actor_type=actor_type,
        target=target,
        outcome=outcome,
        context=context,
        payload=payload,
        changes=changes,
        reason=reason,
        on_behalf_of=on_behalf_of,
    )
    try:
        # No savepoint: if the insert fails, the caller's whole transaction must roll back.
        with transaction.atomic(savepoint=False):
            _event_insert(built)
            if connection.vendor == "sqlite":
                # SQLite serialises writers, so this transaction already holds the only write
                # lock: link the event right here (rolled back with it, if it is). Signing is
                # left to the periodic task, so a key problem never blocks a change.
                seal_batch(limit=1000, checkpoints=False)
    except Exception as exc:
        raise AuditWriteError(f"could not record {built.action}: {exc}") from exc
    return built


_COLUMNS = (
    "event_id, occurred_at, action, outcome, actor_type, actor_id, actor_display, on_behalf_of, "
    "target_type, target_id, campaign_id, run_id, variant_id, sandbox_id, body"
)
_VALUES = ", ".join(["%s"] * 15)
_INSERT = f"INSERT INTO audit_auditevent ({_COLUMNS}) VALUES ({_VALUES}) RETURNING id"  # noqa: S608


def _event_params(event: AuditEvent, db) -> list:
    """The 15 values of _COLUMNS, in order, adapted for this database (`db`, a connection)."""
    event_id = event.event_id if db.features.has_native_uuid_field else event.event_id.hex
    return [
        event_id,
        db.ops.adapt_datetimefield_value(event.occurred_at),
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
    ]


def _event_insert(event: AuditEvent) -> None:
    """One plain INSERT (the ORM's save costs several times more per event; this is the path
    every audited change takes)."""
    db = connections[DEFAULT_DB_ALIAS]
    with db.cursor() as cursor:
        cursor.execute(_INSERT, _event_params(event, db))
        event.pk = cursor.fetchone()[0]
    row_stored(event)


# --- A change and its event in one statement ----------------------------------------------------
_ID_SENTINEL = -7_031_985_224_117_365_001  # stands for the changed row's id while the body is built


def audit_record_change(
    *, sql: str, params: list, always: bool = False, id_key: str | None = None, **event
) -> int | None:
    """Run `sql`, one INSERT or UPDATE of a single row ending in `RETURNING id`, and record the
    event (audit_record's keywords) with it: both are written or neither (fail closed).

    Returns the row's id, or None if the statement matched no row (a transition that lost),
    in which case the event is written only with `always`. `id_key`: the payload key that
    takes the row's id (a row being inserted, e.g. a command's `command_id`).

    In PostgreSQL this is one statement, a data-modifying CTE, so in autocommit it costs one
    round trip instead of BEGIN, two statements and COMMIT (a run makes dozens of these).
    Elsewhere it is the same two statements in one transaction."""
    if always and id_key:
        raise ValueError("always and id_key exclude each other: with no row there is no id")
    db = connections[DEFAULT_DB_ALIAS]  # looked up once (see core.rows)
    if db.vendor != "postgresql":
        with transaction.atomic(savepoint=False):
            with db.cursor() as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
            if row is None and not always:
                return None
            if id_key:
                event["payload"] = {**(event.get("payload") or {}), id_key: row[0]}
            audit_record(**event)
        return row[0] if row else None
    action = event["action"]
    if id_key:
        event = {**event, "payload": {**(event.get("payload") or {}), id_key: _ID_SENTINEL}}
    built = audit_event_build(**event)
    values = _event_params(built, db)
    body = "%s"
    if id_key:  # the body's bytes around the id, joined to it by the statement
        marker = f"{canonical_json(id_key)}:{_ID_SENTINEL}"
        before, sep, after = built.body.partition(marker)
        if not sep or marker in after:
            raise AuditWriteError(f"could not record {action}: {id_key} not once in the payload")
        body = "%s || CAST(change.id AS text) || %s"
        values[-1:] = [before + marker.removesuffix(str(_ID_SENTINEL)), after]
    placeholders = ", ".join(["%s"] * 14 + [body])
    # Only constants and the caller's own statement are formatted in; every value is a parameter.
    if always:
        statement = (
            f"WITH change AS ({sql}), event AS (INSERT INTO audit_auditevent ({_COLUMNS}) "  # noqa: S608
            f"VALUES ({placeholders}) RETURNING id) "
            "SELECT (SELECT id FROM change), event.id FROM event"
        )
    else:
        statement = (
            f"WITH change AS ({sql}), event AS (INSERT INTO audit_auditevent ({_COLUMNS}) "  # noqa: S608
            f"SELECT {placeholders} FROM change RETURNING id) "
            "SELECT change.id, event.id FROM change CROSS JOIN event"
        )
    try:
        with db.cursor() as cursor:
            cursor.execute(statement, [*params, *values])
            row = cursor.fetchone()
    except Exception as exc:
        raise AuditWriteError(f"could not record {action}: {exc}") from exc
    return row[0] if row else None


def audit_denied(*, actor, capability: str, target=None, path: str = "") -> None:
    """Record a refused attempt. It commits even though the request itself fails."""
    audit_record(
        action="people.permission.denied",
        actor=actor,
        outcome="denied",
        target=target,
        payload={"capability": capability, "path": path},
    )


# --- Access -----------------------------------------------------------------------------------
def audit_view_record(*, actor, what: str, query: str = "", target=None, count=None) -> None:
    payload = {"view": what, "query": query}
    if count is not None:
        payload["count"] = count
    audit_record(action="audit.events.viewed", actor=actor, target=target, payload=payload)
