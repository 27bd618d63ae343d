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


class ProviderOut(Schema):
    name: str
    api_style: str
    base_url: str
    allowed_models: list[str]
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    created_at: datetime
    updated_at: datetime
