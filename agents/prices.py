"""Prices per million tokens, prefilled from genai-prices' bundled table when it knows a model.

genai-prices (pydantic's maintained price table) is small: pydantic and an HTTP client, and a
data snapshot in the wheel. We read the snapshot only (no network); admins edit the result.
"""

from __future__ import annotations

from decimal import Decimal

from genai_prices import Usage, calc_price

# Our API styles → the table's provider ids.
_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic"}
MTOK = Decimal(1_000_000)


def price_lookup(*, api_style: str, model: str) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per million tokens for `model`, or None if the table lacks it."""
    try:
        price = calc_price(
            # A small call, scaled up: some prices rise past a context size (tiered).
            Usage(input_tokens=1000, output_tokens=1000),
            model_ref=model,
            provider_id=_PROVIDER_IDS.get(api_style),
        )
    except LookupError:
        return None
    return Decimal(price.input_price) * 1000, Decimal(price.output_price) * 1000


def call_cost(
    *, tokens_in: int, tokens_out: int, input_per_mtok: Decimal, output_per_mtok: Decimal
) -> Decimal:
    cost = (Decimal(tokens_in) * input_per_mtok + Decimal(tokens_out) * output_per_mtok) / MTOK
    return cost.quantize(Decimal("0.000001"))
