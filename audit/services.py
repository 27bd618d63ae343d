"""Recording audit events: one canonical JSON event per action, in the caller's transaction."""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from django.db import models, transaction
from django.http import HttpRequest

from audit.context import current_request, request_context
from audit.models import AuditEvent

SCHEMA = "convoy.audit/1"
OUTCOMES = ("success", "failure", "denied", "error")
ACTOR_TYPES = ("human", "agent", "system", "api_token")
CONTEXT_KEYS = ("campaign_id", "run_id", "variant_id", "sandbox_id", "request_id")


class AuditWriteError(Exception):
    """The event could not be recorded; the change it describes must not happen."""


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
    request: HttpRequest | None = None,
) -> AuditEvent:
    """Write one event in the caller's transaction; raise AuditWriteError if it cannot be."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    ctx = request_context(request) if request is not None else current_request.get()
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
    try:
        with transaction.atomic():
            return AuditEvent.objects.create(
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
    except Exception as exc:
        raise AuditWriteError(f"could not record {action}: {exc}") from exc


def audit_denied(*, request: HttpRequest | None, actor, capability: str, target=None) -> None:
    """Record a refused attempt. It commits even though the request itself fails."""
    audit_record(
        action="people.permission.denied",
        actor=actor,
        outcome="denied",
        target=target,
        request=request,
        payload={"capability": capability, "path": request.path if request else ""},
    )
