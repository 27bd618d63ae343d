"""A campaign's `model:` value (campaign level, and a variant's override): parsing and merging.

`model: {provider: NAME, name: MODEL, budget_usd: 2.0, max_calls: 400, campaign_budget_usd: 50}`
`budget_usd` and `max_calls` hold for each variant on each repository (one sandbox);
`campaign_budget_usd` for the whole campaign (new runs stop when it is spent).
Neither may exceed the ceilings an admin set on the provider (`max_run_budget_usd`,
`max_campaign_budget_usd`); left out, they are those ceilings (model_budgets).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from agents.models import ModelProvider
from agents.providers import provider_budgets

MODEL_KEYS = {"provider", "name", "budget_usd", "max_calls", "campaign_budget_usd"}
_EXAMPLE = "model: {provider: openai-main, name: gpt-5-codex, budget_usd: 2.0, max_calls: 400}"


def model_parse(value: Any, *, path: str) -> tuple[dict, list[tuple[str, str]]]:
    """(normalised mapping, [(field path, message)]). Keys may be partial: a variant's model
    overrides the campaign's key by key (see model_for_variant)."""
    errors: list[tuple[str, str]] = []
    if not isinstance(value, dict):
        return {}, [(path, f"must be a mapping, e.g. {_EXAMPLE}")]
    out: dict[str, Any] = {}
    for key, item in value.items():
        where = f"{path}.{key}"
        if key not in MODEL_KEYS:
            errors.append((where, f"unknown key (expected one of {', '.join(sorted(MODEL_KEYS))})"))
        elif key in ("provider", "name"):
            if not isinstance(item, str) or not item.strip() or len(item) > 200:
                errors.append((where, "must be a non-empty string"))
            else:
                out[key] = item.strip()
        elif key == "max_calls":
            if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 1_000_000:
                errors.append((where, "must be a whole number of calls from 1 to 1000000"))
            else:
                out[key] = item
        elif isinstance(item, bool) or not isinstance(item, int | float) or not 0 < item <= 1e6:
            errors.append((where, "must be an amount in USD above 0, e.g. 2.5"))
        else:
            out[key] = float(item)
    if "provider" in out and not ModelProvider.objects.filter(name=out["provider"]).exists():
        errors.append(
            (
                f"{path}.provider",
                f"no model provider named {out['provider']!r} (an admin adds one with "
                "`manage.py provider add` or on the Model providers page)",
            )
        )
    return out, errors


def model_for_variant(spec: dict, variant: dict) -> dict | None:
    """The variant's effective model settings, or None when it uses no model."""
    merged = {**(spec.get("model") or {}), **(variant.get("model") or {})}
    return merged or None


def model_spec_errors(spec: dict) -> list[tuple[str, str]]:
    """Every variant that uses a model must end up with a provider and a name, and with
    budgets under its provider's ceilings."""
    errors = []
    for i, variant in enumerate(spec.get("variants") or []):
        merged = model_for_variant(spec, variant)
        if merged is None:
            continue
        for key in ("provider", "name"):
            if key not in merged:
                where = f"variants[{i}].model.{key}" if variant.get("model") else f"model.{key}"
                errors.append((where, "is required"))
    return errors + model_ceiling_errors(spec)


_CEILINGS = (
    ("campaign_budget_usd", "max_campaign_budget_usd", "for the whole campaign"),
    ("budget_usd", "max_run_budget_usd", "for each variant on each repository"),
)


def _providers(spec: dict) -> dict[str, ModelProvider]:
    names = {
        m["provider"]
        for m in (model_for_variant(spec, v) for v in spec.get("variants") or [])
        if m and m.get("provider")
    }
    found = ModelProvider.objects.filter(name__in=names).exclude(name__startswith="removed-")
    return {p.name: p for p in found}


def model_ceiling_errors(spec: dict) -> list[tuple[str, str]]:
    """A budget the spec names above its provider's ceiling, at the path that names it (the
    variant's own `model:` or the campaign's). Checked when a spec is saved and again at
    preview and launch: an admin may have lowered the ceiling since."""
    providers = _providers(spec)
    errors: list[tuple[str, str]] = []
    for i, variant in enumerate(spec.get("variants") or []):
        merged = model_for_variant(spec, variant) or {}
        provider = providers.get(merged.get("provider"))
        if provider is None:
            continue  # no model, or an unknown provider: reported on its own
        for key, attr, scope in _CEILINGS:
            ceiling, value = getattr(provider, attr), merged.get(key)
            if ceiling is None or value is None or Decimal(str(value)) <= ceiling:
                continue
            own = key in (variant.get("model") or {})
            where = f"variants[{i}].model.{key}" if own else f"model.{key}"
            error = (
                where,
                f"${value:g} is above the ceiling an admin set on provider {provider.name!r} "
                f"{scope} (${ceiling}, {attr}); name at most that, or leave it out to get it",
            )
            if error not in errors:
                errors.append(error)
    return errors


def model_budgets(spec: dict) -> dict | None:
    """What the campaign's models may spend: {"campaign_budget_usd", "from_ceiling"} (the
    lowest of its variants' campaign budgets, each the spec's or its provider's ceiling, and
    whether a ceiling set it), or None when no variant uses a known provider."""
    providers = _providers(spec)
    budgets = []
    for variant in spec.get("variants") or []:
        merged = model_for_variant(spec, variant) or {}
        provider = providers.get(merged.get("provider"))
        if provider is None:
            continue
        _run, campaign = provider_budgets(
            provider, campaign_budget_usd=merged.get("campaign_budget_usd")
        )
        named = merged.get("campaign_budget_usd")
        budgets.append((campaign, named is None or Decimal(str(named)) > campaign))
    if not budgets:
        return None
    campaign, from_ceiling = min(budgets)
    return {"campaign_budget_usd": campaign, "from_ceiling": from_ceiling}
