"""API bodies for model providers and a variant's model calls."""

from datetime import datetime
from decimal import Decimal

from ninja import Field, Schema


class ProviderIn(Schema):
    name: str = Field(max_length=100)
    api_style: str = Field(description="openai or anthropic")
    base_url: str = Field(max_length=500, description="API root incl. version, e.g. …/v1")
    key: str | None = Field(None, max_length=10_000, description="write-only; omit to keep")
    allowed_models: list[str] = Field(default_factory=list, max_length=200)
    input_usd_per_mtok: Decimal | None = Field(None, ge=0, le=100_000)
    output_usd_per_mtok: Decimal | None = Field(None, ge=0, le=100_000)
    max_campaign_budget_usd: Decimal | None = Field(
        None, description="what one campaign may spend; omitted keeps it (new: 50.00)"
    )
    max_run_budget_usd: Decimal | None = Field(
        None, description="what one variant may spend per repository; null removes, omitted keeps"
    )


class ProviderOut(Schema):
    name: str
    api_style: str
    base_url: str
    allowed_models: list[str]
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    max_campaign_budget_usd: Decimal
    max_run_budget_usd: Decimal | None
    created_at: datetime
    updated_at: datetime
