"""Model providers (admin-configured upstreams), grants (a variant's token and budget) and the
record of every model call a sandbox made through the gateway.

Campaign, run and variant ids are plain integers: this app sits below `campaigns` and never
imports it (the pipeline hands it ids).
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

# What a new provider lets one campaign spend until an admin says otherwise (also given to the
# providers that existed before ceilings did).
DEFAULT_MAX_CAMPAIGN_BUDGET_USD = Decimal("50.00")


class ApiStyle(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible (chat completions, responses)"
    ANTHROPIC = "anthropic", "Anthropic messages"


class ModelProvider(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    api_style = models.CharField(max_length=20, choices=ApiStyle.choices)
    # The upstream's API root including its version, e.g. https://api.openai.com/v1.
    base_url = models.URLField(max_length=500)
    key_ciphertext = models.BinaryField()  # Fernet (core.crypto); never shown again
    allowed_models = models.JSONField(default=list, blank=True)  # [] allows any model
    input_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=4, default=0)
    output_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=4, default=0)
    # Admin-set ceilings: a spec's `campaign_budget_usd` (absent: this) and `budget_usd`
    # (absent: this, when set) may not exceed them.
    max_campaign_budget_usd = models.DecimalField(
        max_digits=12, decimal_places=2, default=DEFAULT_MAX_CAMPAIGN_BUDGET_USD
    )
    max_run_budget_usd = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Exhausted(models.TextChoices):
    NO = "", "no"
    BUDGET = "budget", "budget_usd spent"
    CALLS = "calls", "max_calls made"
    CAMPAIGN = "campaign", "the campaign's budget spent"


class ModelGrant(models.Model):
    """One variant attempt's right to call one model through the gateway, until revoked."""

    token_sha256 = models.CharField(max_length=64, unique=True)
    campaign_id = models.BigIntegerField(db_index=True)
    run_id = models.BigIntegerField()
    variant_id = models.BigIntegerField(db_index=True)
    # The sandbox the token was given to: its audit history shows commands and model calls.
    sandbox_id = models.BigIntegerField(null=True, blank=True)
    provider = models.ForeignKey(ModelProvider, on_delete=models.PROTECT, related_name="grants")
    model = models.CharField(max_length=200)
    budget_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    max_calls = models.PositiveIntegerField(null=True, blank=True)
    campaign_budget_usd = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    calls = models.PositiveIntegerField(default=0)
    spent_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    exhausted = models.CharField(max_length=20, choices=Exhausted.choices, default="", blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["run_id"])]

    def __str__(self) -> str:
        return f"grant {self.pk} (variant {self.variant_id}, {self.model})"


class CallOutcome(models.TextChoices):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"  # the provider answered 4xx/5xx
    UNREACHABLE = "unreachable"
    REFUSED = "refused"  # the gateway refused (budget, model, token)


class ModelCall(models.Model):
    grant = models.ForeignKey(
        ModelGrant, null=True, blank=True, on_delete=models.SET_NULL, related_name="model_calls"
    )
    campaign_id = models.BigIntegerField(db_index=True)
    run_id = models.BigIntegerField()
    variant_id = models.BigIntegerField(db_index=True)
    provider_name = models.CharField(max_length=100)
    model = models.CharField(max_length=200)
    path = models.CharField(max_length=300)
    stream = models.BooleanField(default=False)
    status_code = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=20, choices=CallOutcome.choices)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    first_byte_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # zlib-compressed JSON {"request": ..., "response": ...}, secret values masked.
    transcript = models.BinaryField(default=b"")
    started_at = models.DateTimeField()

    class Meta:
        ordering = ["started_at", "pk"]

    def __str__(self) -> str:
        return f"call {self.pk} ({self.provider_name}/{self.model}, {self.outcome})"
