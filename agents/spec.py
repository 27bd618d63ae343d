"""A campaign's `model:` value (campaign level, and a variant's override): parsing and merging.

`model: {provider: NAME, name: MODEL, budget_usd: 2.0, max_calls: 400, campaign_budget_usd: 50}`
`budget_usd` and `max_calls` hold for each variant on each repository (one sandbox);
`campaign_budget_usd` for the whole campaign (new runs stop when it is spent).
"""

from __future__ import annotations

from typing import Any

from agents.models import ModelProvider

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
    """Every variant that uses a model must end up with a provider and a name."""
    errors = []
    for i, variant in enumerate(spec.get("variants") or []):
        merged = model_for_variant(spec, variant)
        if merged is None:
            continue
        for key in ("provider", "name"):
            if key not in merged:
                where = f"variants[{i}].model.{key}" if variant.get("model") else f"model.{key}"
                errors.append((where, "is required"))
    return errors
