"""Grants: a variant's gateway token with its model and budget (minted when its sandbox starts,
revoked when it ends), admission of each call against the budget, and the record of each call
(a ModelCall row and an audit event, in one transaction)."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import F, Max, Q, Sum
from django.utils import timezone

from agents.models import CallOutcome, Exhausted, ModelCall, ModelGrant, ModelProvider
from agents.prices import call_cost
from agents.providers import ENDPOINTS, provider_budgets, provider_get
from audit.record import audit_hmac, audit_record
from core.errors import Invalid
from sandboxes.egress.sandbox import sandbox_key_for

TOKEN_PREFIX = "convoy-gw-"  # noqa: S105 - a prefix, so scanners and people recognise one


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Values the gateway masks in this grant's transcripts besides the keys (the run's secrets).
# Kept in memory only: the gateway runs in the worker process that minted the grant.
_masks: dict[int, tuple[str, ...]] = {}
_masks_lock = threading.Lock()


def grant_masks(grant_id: int) -> tuple[str, ...]:
    with _masks_lock:
        return _masks.get(grant_id, ())


def grant_mint(
    *,
    campaign_id: int,
    run_id: int,
    variant_id: int,
    provider_name: str,
    model: str,
    sandbox_id: int | None = None,
    budget_usd: float | None = None,
    max_calls: int | None = None,
    campaign_budget_usd: float | None = None,
    ttl_s: int = 86_400,
    masks: tuple[str, ...] = (),
) -> tuple[ModelGrant, str]:
    """A new grant and its token (returned once; only its hash is stored). Earlier grants of
    the variant are revoked: a retried variant gets a fresh token. Its budgets are the spec's
    under the provider's ceilings, and the ceilings where the spec named none: every grant
    has a campaign budget."""
    provider = provider_get(name=provider_name)
    budget, campaign_budget = provider_budgets(
        provider, budget_usd=budget_usd, campaign_budget_usd=campaign_budget_usd
    )
    if provider.allowed_models and model not in provider.allowed_models:
        raise Invalid(
            f"model {model!r} is not allowed for provider {provider_name!r} "
            f"(allowed: {', '.join(provider.allowed_models)})",
            field="model.name",
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        grants_revoke(variant_id=variant_id)
        grant = ModelGrant.objects.create(
            token_sha256=token_hash(token),
            campaign_id=campaign_id,
            run_id=run_id,
            variant_id=variant_id,
            sandbox_id=sandbox_id,
            provider=provider,
            model=model,
            budget_usd=budget,
            max_calls=max_calls,
            campaign_budget_usd=campaign_budget,
            expires_at=timezone.now() + timedelta(seconds=ttl_s),
        )
        audit_record(
            action="agents.grant.minted",
            actor_type="system",
            target={"type": "variant", "id": str(variant_id), "display": f"variant {variant_id}"},
            context={
                "campaign_id": campaign_id,
                "run_id": run_id,
                "variant_id": variant_id,
                "sandbox_id": sandbox_id,
            },
            payload={
                "grant_id": grant.pk,
                "provider": provider.name,
                "model": model,
                "budget_usd": None if budget is None else str(budget),
                "max_calls": max_calls,
                "campaign_budget_usd": str(campaign_budget),
                "token": audit_hmac(token),
            },
        )
    with _masks_lock:
        _masks[grant.pk] = tuple(m for m in masks if m)
    return grant, token


def grants_revoke(*, variant_id: int | None = None, run_id: int | None = None) -> list[int]:
    """Revoke the live grants of a variant or a run (its sandboxes ended); their tokens stop
    working at once. Returns the revoked grants' ids."""
    live = ModelGrant.objects.filter(revoked_at=None)
    if variant_id is not None:
        live = live.filter(variant_id=variant_id)
    elif run_id is not None:
        live = live.filter(run_id=run_id)
    else:
        raise ValueError("variant_id or run_id")
    with transaction.atomic():
        grants = list(live.select_for_update())
        now = timezone.now()
        for grant in grants:
            ModelGrant.objects.filter(pk=grant.pk).update(revoked_at=now)
            audit_record(
                action="agents.grant.revoked",
                actor_type="system",
                target=_variant_target(grant),
                context={
                    "campaign_id": grant.campaign_id,
                    "run_id": grant.run_id,
                    "variant_id": grant.variant_id,
                },
                payload={
                    "grant_id": grant.pk,
                    "calls": grant.calls,
                    "spent_usd": str(grant.spent_usd),
                    "exhausted": grant.exhausted,
                },
            )
    with _masks_lock:
        for grant in grants:
            _masks.pop(grant.pk, None)
    return [g.pk for g in grants]


# --- the gateway's side ---------------------------------------------------------------------


class Refusal(Exception):
    """The gateway answers the agent with this status and an error body it can show."""

    def __init__(self, status: int, kind: str, message: str, grant: ModelGrant | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.grant = status, kind, message, grant


@dataclass
class Admission:
    grant: ModelGrant
    provider: ModelProvider


def _budget_text(grant: ModelGrant) -> str:
    parts = [f"{grant.calls} call(s), ${grant.spent_usd:.6f} spent"]
    if grant.max_calls is not None:
        parts.append(f"max_calls {grant.max_calls}")
    if grant.budget_usd is not None:
        parts.append(f"budget_usd {grant.budget_usd:.6f}")
    return ", ".join(parts)


# What a token names never changes (variant, model, provider, limits): the gateway keeps it a few
# seconds, so the common admission is one UPDATE. Revocation and the counts are always read
# fresh by that UPDATE; a provider's changes (key, models) apply within GRANT_CACHE_S.
GRANT_CACHE_S = 5.0
_grants: dict[str, tuple[float, ModelGrant]] = {}
_grants_lock = threading.Lock()
_async_commit = threading.local()


def _grant_load(key_hash: str) -> ModelGrant | None:
    now = time.monotonic()
    with _grants_lock:
        hit = _grants.get(key_hash)
    if hit is not None and now - hit[0] < GRANT_CACHE_S:
        return hit[1]
    grant = ModelGrant.objects.select_related("provider").filter(token_sha256=key_hash).first()
    if grant is not None:
        with _grants_lock:
            if len(_grants) > 10_000:
                _grants.clear()
            _grants[key_hash] = (now, grant)
    return grant


def _count_without_flush() -> None:
    """The count is the gate in front of every call: this connection's commits do not wait for
    the WAL flush (a few ms here). A database crash may forget the last counts, never more.
    Only the gateway's admission threads use this (their connections do nothing else)."""
    if connection.vendor != "postgresql":
        return
    connection.ensure_connection()
    if getattr(_async_commit, "raw", None) is not connection.connection:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO OFF")
        _async_commit.raw = connection.connection


def call_authenticate(*, token: str, caller: str | None, method: str, endpoint: str) -> ModelGrant:
    """Check the token, the caller and the endpoint: all the gateway knows before it reads a
    request's body. Raises Refusal.

    `caller`: the calling sandbox's key as the egress proxy named it (None when the call did
    not come through the proxy); a token given to a sandbox works only from that sandbox.
    `endpoint`: the request's normalised path after the base URL (`/chat/completions`)."""
    if not token:
        raise Refusal(401, "missing_token", "Convoy gateway: no API key (token) was sent")
    grant = _grant_load(token_hash(token))
    if grant is None:
        raise Refusal(401, "invalid_token", "Convoy gateway: this API key (token) is not valid")
    if grant.revoked_at is not None or grant.expires_at <= timezone.now():
        raise Refusal(401, "revoked_token", "Convoy gateway: this token ended with its sandbox")
    if grant.sandbox_id is not None and caller != sandbox_key_for(grant.sandbox_id):
        raise Refusal(
            403, "wrong_sandbox", "Convoy gateway: this token belongs to another sandbox", grant
        )
    allowed = ENDPOINTS.get(grant.provider.api_style, frozenset())
    if method != "POST" or endpoint not in allowed:
        raise Refusal(
            403,
            "endpoint_not_allowed",
            f"Convoy gateway: {method} /v1{endpoint} is not a model call this token may make "
            f"(allowed: {', '.join(f'POST /v1{e}' for e in sorted(allowed))})",
            grant,
        )
    return grant


def call_reservation(
    *, grant: ModelGrant, request_bytes: int, max_tokens: int | None, choices: int = 1
) -> Decimal:
    """What a call may cost, held against the campaign's budget while it runs (calls of other
    variants in flight would otherwise all be admitted against the same old total): the
    request's size as input tokens (about 4 bytes each) and its max tokens (else
    RESERVE_OUTPUT_TOKENS) for each of its `choices` (`n`) as output, or the grant's dearest
    call so far if more."""
    if grant.campaign_budget_usd is None and grant.budget_usd is None:
        return Decimal(0)
    provider = grant.provider
    estimate = call_cost(
        tokens_in=request_bytes // 4,
        tokens_out=(max_tokens or RESERVE_OUTPUT_TOKENS) * max(choices, 1),
        input_per_mtok=provider.input_usd_per_mtok,
        output_per_mtok=provider.output_usd_per_mtok,
    )
    dearest = ModelCall.objects.filter(grant_id=grant.pk).aggregate(m=Max("cost_usd"))["m"]
    return max(estimate, dearest or Decimal(0))


RESERVE_OUTPUT_TOKENS = 8192


def call_admit(
    *,
    token: str,
    model: str | None,
    method: str,
    endpoint: str,
    reserve: Decimal = Decimal(0),
    fast_commit: bool = False,
    caller: str | None = None,
) -> Admission:
    """Check the token, the caller, the endpoint, the model and the budgets; count the call and
    hold `reserve` (call_reservation) on the grant's spend until call_record settles it.
    Raises Refusal.

    `fast_commit`: the caller's thread only admits calls (the gateway's admission pool)."""
    grant = call_authenticate(token=token, caller=caller, method=method, endpoint=endpoint)
    provider = grant.provider
    # Exactly the variant's model: another of the provider's models may cost far more (and
    # would be priced as this one).
    if model != grant.model:
        raise Refusal(
            403,
            "model_not_allowed",
            f"Convoy gateway: model {model!r} is not granted to this variant "
            f"(granted: {grant.model!r})",
            grant,
        )
    if fast_commit:
        _count_without_flush()
    campaign_spent = None
    with transaction.atomic():
        if grant.campaign_budget_usd is not None:
            # Admissions of the campaign's variants take turns on one lock (not on every one
            # of its grants' rows), and each sees the others' calls in flight (their
            # reservations are in spent_usd).
            _campaign_lock(grant.campaign_id)
            spent = ModelGrant.objects.filter(campaign_id=grant.campaign_id).aggregate(
                s=Sum("spent_usd")
            )["s"] or Decimal(0)
            if spent >= grant.campaign_budget_usd:
                campaign_spent = spent
        if campaign_spent is None:
            counted = (
                ModelGrant.objects.filter(pk=grant.pk, revoked_at=None)
                .filter(Q(max_calls=None) | Q(calls__lt=F("max_calls")))
                .filter(Q(budget_usd=None) | Q(spent_usd__lt=F("budget_usd")))
                .update(calls=F("calls") + 1, spent_usd=F("spent_usd") + reserve)
            )
    if campaign_spent is not None:
        settled = _settled(campaign_id=grant.campaign_id)
        budget = f"the campaign's model budget (${grant.campaign_budget_usd:.2f})"
        if settled < grant.campaign_budget_usd:
            # Only calls in flight hold it: they may end cheaper than reserved. Not exhausted.
            raise _held(grant, budget, held=campaign_spent - settled)
        ModelGrant.objects.filter(pk=grant.pk).update(exhausted=Exhausted.CAMPAIGN)
        raise Refusal(
            429,
            "budget_exhausted",
            f"Convoy gateway: budget exhausted: {budget} is spent (${settled:.6f})",
            grant,
        )
    if not counted:
        fresh = ModelGrant.objects.get(pk=grant.pk)
        fresh.provider = provider  # kept loaded: the gateway records the refusal with it
        if fresh.revoked_at is not None:
            raise Refusal(401, "revoked_token", "Convoy gateway: this token ended with its sandbox")
        why = Exhausted.BUDGET
        if fresh.max_calls is not None and fresh.calls >= fresh.max_calls:
            why = Exhausted.CALLS
        else:
            settled = _settled(grant_id=grant.pk)
            if fresh.budget_usd is not None and settled < fresh.budget_usd:
                budget = f"this variant's budget_usd ({fresh.budget_usd:.6f})"
                raise _held(fresh, budget, held=fresh.spent_usd - settled)
        ModelGrant.objects.filter(pk=grant.pk).update(exhausted=why)
        raise Refusal(
            429,
            "budget_exhausted",
            f"Convoy gateway: budget exhausted for this variant ({_budget_text(fresh)})",
            fresh,
        )
    return Admission(grant=grant, provider=provider)


# pg_advisory_xact_lock(int, int): this namespace ("gate") and a campaign's id. The two-key
# locks never collide with the one-key locks used elsewhere (audit sealing, dispatch).
_CAMPAIGN_LOCK = 0x67617465


def _campaign_lock(campaign_id: int) -> None:
    """Hold the campaign's admission lock until the transaction ends. SQLite needs none: its
    transactions (IMMEDIATE) already take turns."""
    if connection.vendor != "postgresql":
        return
    key = (campaign_id + 2**31) % 2**32 - 2**31  # an int4; a collision only shares a lock
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_CAMPAIGN_LOCK, key])


def _settled(*, campaign_id: int | None = None, grant_id: int | None = None) -> Decimal:
    """What the campaign's (or the grant's) recorded calls cost: its spend without the
    reservations of calls in flight."""
    calls = ModelCall.objects.all()
    calls = calls.filter(grant_id=grant_id) if grant_id is not None else calls
    calls = calls.filter(campaign_id=campaign_id) if campaign_id is not None else calls
    return calls.aggregate(s=Sum("cost_usd"))["s"] or Decimal(0)


def _held(grant: ModelGrant, budget: str, *, held: Decimal) -> Refusal:
    """The refusal when only calls in flight hold the budget: the agent may retry (no mark
    on the grant; its budget is not spent)."""
    return Refusal(
        429,
        "budget_held",
        f"Convoy gateway: {budget} is held by calls in flight (${held:.6f} reserved); "
        "retry when they end",
        grant,
    )


def _variant_target(grant: ModelGrant) -> dict:
    """The audit target of a grant's events: its variant."""
    return {
        "type": "variant",
        "id": str(grant.variant_id),
        "display": f"variant {grant.variant_id}",
    }


def call_release(*, grant: ModelGrant, reserved: Decimal, error: str) -> None:
    """Give back what call_admit reserved for a call whose record could not be written (the
    gateway's last resort: call_record settles the reservation otherwise)."""
    with transaction.atomic():
        ModelGrant.objects.filter(pk=grant.pk).update(spent_usd=F("spent_usd") - reserved)
        audit_record(
            action="agents.model.reservation_released",
            actor_type="system",
            outcome="error",
            target=_variant_target(grant),
            context={
                "campaign_id": grant.campaign_id,
                "run_id": grant.run_id,
                "variant_id": grant.variant_id,
                "sandbox_id": grant.sandbox_id,
            },
            reason=error[:500],
            payload={"grant_id": grant.pk, "reserved_usd": str(reserved)},
        )


def _transcript_sha256(blob: bytes) -> str:
    """The hash of the stored transcript's JSON (as `transcript_unpack` reads it)."""
    return hashlib.sha256(zlib.decompress(blob)).hexdigest() if blob else ""


def call_record(
    *,
    grant: ModelGrant,
    provider_name: str,
    model: str,
    path: str,
    stream: bool,
    status_code: int,
    outcome: str,
    tokens_in: int = 0,
    tokens_out: int = 0,
    latency_ms: int = 0,
    first_byte_ms: int | None = None,
    error: str = "",
    transcript: bytes = b"",
    started_at=None,
    input_per_mtok: Decimal = Decimal(0),
    output_per_mtok: Decimal = Decimal(0),
    reserved: Decimal = Decimal(0),
    usage_estimated: bool = False,
) -> ModelCall:
    """One call's row, its cost on the grant (settling what call_admit reserved), and its audit
    event, in one transaction. `usage_estimated`: the answer showed no usage; the tokens are
    the gateway's estimate (the audit event and the transcript say so)."""
    cost = call_cost(
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
    )
    context = {
        "campaign_id": grant.campaign_id,
        "run_id": grant.run_id,
        "variant_id": grant.variant_id,
    }
    with transaction.atomic():
        call = ModelCall.objects.create(
            grant=grant,
            **context,
            provider_name=provider_name,
            model=model[:200],
            path=path[:300],
            stream=stream,
            status_code=status_code,
            outcome=outcome,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=cost,
            latency_ms=latency_ms,
            first_byte_ms=first_byte_ms,
            error=error[:2000],
            transcript=transcript,
            started_at=started_at or timezone.now(),
        )
        updates = {
            "spent_usd": F("spent_usd") + cost - reserved,
            "tokens_in": F("tokens_in") + tokens_in,
            "tokens_out": F("tokens_out") + tokens_out,
        }
        if outcome == CallOutcome.UNREACHABLE:
            updates["last_error"] = error[:2000]
        ModelGrant.objects.filter(pk=grant.pk).update(**updates)
        audit_record(  # with sandbox_id: the sandbox's history is one timeline with its commands
            action="agents.model.called",
            actor_type="agent",
            outcome={
                CallOutcome.OK: "success",
                CallOutcome.REFUSED: "denied",
                CallOutcome.UPSTREAM_ERROR: "failure",
            }.get(outcome, "error"),
            target={"type": "model", "id": model[:200], "display": f"{provider_name}/{model}"},
            context={**context, "sandbox_id": grant.sandbox_id},
            reason=error[:500],
            payload={
                "call_id": call.pk,
                "provider": provider_name,
                "model": model[:200],
                "path": path[:300],
                "stream": stream,
                "status": status_code,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "cost_usd": str(cost),
                "usage_estimated": usage_estimated,
                "latency_ms": latency_ms,
                "first_byte_ms": first_byte_ms,
                # The transcript itself is the variant's (JSON Lines download); this binds it.
                "transcript_sha256": _transcript_sha256(transcript),
            },
        )
    return call
