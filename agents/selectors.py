"""Reads of model use: per variant, per campaign, and a variant's transcript."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from decimal import Decimal
from statistics import median

from django.db.models import Count, Sum

from agents.models import ModelCall, ModelGrant
from agents.spec import model_budgets
from agents.usage import transcript_unpack

_ZERO = {"calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": Decimal(0)}


def _sums(qs) -> dict:
    row = qs.aggregate(
        calls=Count("pk"),
        tokens_in=Sum("tokens_in"),
        tokens_out=Sum("tokens_out"),
        cost_usd=Sum("cost_usd"),
    )
    return {k: row[k] or _ZERO[k] for k in _ZERO}


def variants_model_usage(*, variant_ids: Iterable[int]) -> dict[int, dict]:
    """{variant_id: {calls, tokens_in, tokens_out, cost_usd}} for variants that made calls."""
    rows = (
        ModelCall.objects.filter(variant_id__in=list(variant_ids))
        .values("variant_id")
        .annotate(
            calls=Count("pk"),
            tokens_in=Sum("tokens_in"),
            tokens_out=Sum("tokens_out"),
            cost_usd=Sum("cost_usd"),
        )
    )
    return {r.pop("variant_id"): r for r in rows}


def campaign_model_spend(*, campaign_id: int) -> dict:
    """{calls, tokens_in, tokens_out, cost_usd, variants}: what the campaign's agents used."""
    sums = _sums(ModelCall.objects.filter(campaign_id=campaign_id))
    sums["variants"] = (
        ModelCall.objects.filter(campaign_id=campaign_id).values("variant_id").distinct().count()
    )
    return sums


def campaign_run_costs(*, campaign_id: int) -> list[Decimal]:
    """The model cost of each run that made calls (for a forecast from the median)."""
    rows = (
        ModelCall.objects.filter(campaign_id=campaign_id)
        .values("run_id")
        .annotate(cost=Sum("cost_usd"))
    )
    return [r["cost"] or Decimal(0) for r in rows]


def campaign_model_budget(*, campaign_id: int, spec: dict, remaining_runs: int = 0) -> dict | None:
    """Spend so far, the campaign's budget (if any) and a forecast for all its runs (the median
    cost per run so far times the runs still to come); None when the campaign uses no model."""
    if not (spec.get("model") or any(v.get("model") for v in spec.get("variants", []))):
        return None
    spend = campaign_model_spend(campaign_id=campaign_id)
    costs = campaign_run_costs(campaign_id=campaign_id)
    per_run = Decimal(median(costs)) if costs else None
    budgets = model_budgets(spec)
    return {
        **spend,
        "budget_usd": budgets["campaign_budget_usd"] if budgets else None,
        "budget_from_ceiling": bool(budgets and budgets["from_ceiling"]),
        "median_run_usd": per_run,
        "forecast_usd": spend["cost_usd"] + per_run * remaining_runs
        if per_run is not None
        else None,
        "remaining_runs": remaining_runs,
    }


def campaign_model_line(budget: dict) -> str:
    """One line of text for `campaign status`."""
    line = f"models: ${budget['cost_usd']:.4f}"
    if budget["budget_usd"]:
        line += f" of ${budget['budget_usd']:.2f} budget"
        if budget["budget_from_ceiling"]:
            line += " (the provider's ceiling)"
    line += f", {budget['calls']} call(s), {budget['tokens_in']} in / {budget['tokens_out']} out"
    if budget["forecast_usd"] is not None and budget["remaining_runs"]:
        line += f", forecast ${budget['forecast_usd']:.2f} for all runs"
    return line


def variant_grant_latest(*, variant_id: int) -> ModelGrant | None:
    return (
        ModelGrant.objects.select_related("provider")
        .filter(variant_id=variant_id)
        .order_by("-pk")
        .first()
    )


def variant_calls(*, variant_id: int) -> list[ModelCall]:
    return list(ModelCall.objects.filter(variant_id=variant_id).defer("transcript"))


def call_as_dict(call: ModelCall, *, transcript: bool) -> dict:
    record = {
        "call_id": call.pk,
        "started_at": call.started_at.isoformat(),
        "variant_id": call.variant_id,
        "provider": call.provider_name,
        "model": call.model,
        "path": call.path,
        "stream": call.stream,
        "status": call.status_code,
        "outcome": call.outcome,
        "tokens_in": call.tokens_in,
        "tokens_out": call.tokens_out,
        "cost_usd": str(call.cost_usd),
        "latency_ms": call.latency_ms,
        "first_byte_ms": call.first_byte_ms,
        "error": call.error,
    }
    if transcript:
        record.update(transcript_unpack(call.transcript))
    return record


DISPLAY_CHARS = 20_000  # per request or response on the page; the download has everything


def _text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    if len(text) > DISPLAY_CHARS:
        more = len(text) - DISPLAY_CHARS
        text = f"{text[:DISPLAY_CHARS]}\n… {more:,} more characters in the JSON Lines download"
    return text


def variant_transcript(*, variant_id: int) -> list[dict]:
    """Every call of the variant with its (masked) request and response, oldest first; with
    `request_text` and `response_text` for display."""
    records = [
        call_as_dict(c, transcript=True) for c in ModelCall.objects.filter(variant_id=variant_id)
    ]
    for record in records:
        record["request_text"] = _text(record.get("request", ""))
        record["response_text"] = _text(record.get("response", ""))
    return records


def variant_transcript_jsonl(*, variant_id: int) -> Iterator[str]:
    for call in ModelCall.objects.filter(variant_id=variant_id).iterator(chunk_size=50):
        yield json.dumps(call_as_dict(call, transcript=True), ensure_ascii=False) + "\n"
