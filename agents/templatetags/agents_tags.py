"""Template tags for model use: a variant's tokens and cost, a campaign's spend and forecast.

They take plain values (ids, the spec dict, run counts), so pages of higher apps can show them
without this app knowing theirs."""

from __future__ import annotations

from decimal import Decimal
from statistics import median

from django import template

from agents.selectors import campaign_model_spend, campaign_run_costs, variants_model_usage

register = template.Library()


@register.simple_tag
def variant_model_usage(variant_id: int) -> dict | None:
    """{calls, tokens_in, tokens_out, cost_usd} of the variant, or None if it called no model."""
    return variants_model_usage(variant_ids=[variant_id]).get(variant_id)


@register.simple_tag
def campaign_model_budget(campaign_id: int, spec: dict, total: int = 0, final: int = 0):
    """Spend so far, the campaign's budget (if any) and a forecast for the runs still to come
    (the median cost per run so far times the runs not yet finished); None without models."""
    uses_models = bool(spec.get("model")) or any(v.get("model") for v in spec.get("variants", []))
    if not uses_models:
        return None
    spend = campaign_model_spend(campaign_id=campaign_id)
    costs = campaign_run_costs(campaign_id=campaign_id)
    remaining = max(0, int(total or 0) - int(final or 0))
    per_run = Decimal(median(costs)) if costs else None
    budget = (spec.get("model") or {}).get("campaign_budget_usd")
    return {
        **spend,
        "budget_usd": Decimal(str(budget)) if budget else None,
        "median_run_usd": per_run,
        "forecast_usd": spend["cost_usd"] + per_run * remaining if per_run is not None else None,
        "remaining_runs": remaining,
    }
