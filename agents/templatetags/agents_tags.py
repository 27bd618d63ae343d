"""Template tags for model use: a variant's tokens and cost, a campaign's spend and forecast.

They take plain values (ids, the spec dict, run counts), so pages of higher apps can show them
without this app knowing theirs."""

from __future__ import annotations

from django import template

from agents import selectors
from agents.selectors import variants_model_usage
from agents.spec import model_budgets

register = template.Library()


@register.simple_tag
def variant_model_usage(variant_id: int) -> dict | None:
    """{calls, tokens_in, tokens_out, cost_usd} of the variant, or None if it called no model."""
    return variants_model_usage(variant_ids=[variant_id]).get(variant_id)


@register.simple_tag
def campaign_model_budget(campaign_id: int, spec: dict, total: int = 0, final: int = 0):
    """Spend, budget and forecast (agents.selectors.campaign_model_budget) for the page."""
    remaining = max(0, int(total or 0) - int(final or 0))
    return selectors.campaign_model_budget(
        campaign_id=campaign_id, spec=spec, remaining_runs=remaining
    )


@register.simple_tag
def campaign_model_ceiling(spec: dict) -> dict | None:
    """{campaign_budget_usd, from_ceiling} of a campaign that uses models (agents.spec)."""
    return model_budgets(spec)
