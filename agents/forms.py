"""The model provider form (admins). The key field is write-only: left empty it keeps the key."""

from decimal import Decimal

from django import forms

from agents.models import DEFAULT_MAX_CAMPAIGN_BUDGET_USD, ApiStyle


class ProviderForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="e.g. openai-main; campaigns name it")
    api_style = forms.ChoiceField(choices=ApiStyle.choices, label="API style")
    base_url = forms.URLField(
        assume_scheme="https",
        max_length=500,
        label="Base URL",
        help_text="the API root with its version, e.g. …/v1",
    )
    key = forms.CharField(
        required=False,
        max_length=10_000,
        widget=forms.PasswordInput,
        label="API key",
        help_text="stored encrypted, never shown again; leave empty to keep the stored key",
    )
    allowed_models = forms.CharField(
        required=False, max_length=5000, help_text="comma-separated; empty allows any model"
    )
    input_usd_per_mtok = forms.DecimalField(
        required=False,
        min_value=0,
        max_value=100_000,
        label="Input USD per million tokens",
        help_text="empty: from the price table when it knows the first model",
    )
    output_usd_per_mtok = forms.DecimalField(
        required=False, min_value=0, max_value=100_000, label="Output USD per million tokens"
    )
    # The service checks them too (API, command); here the error shows beside the field.
    max_campaign_budget_usd = forms.DecimalField(
        required=False,
        initial=DEFAULT_MAX_CAMPAIGN_BUDGET_USD,
        min_value=Decimal("0.01"),
        max_value=1_000_000,
        decimal_places=2,
        label="Ceiling per campaign (USD)",
        help_text="what one campaign may spend on this provider (empty keeps it; a new provider "
        f"gets {DEFAULT_MAX_CAMPAIGN_BUDGET_USD}); a spec's campaign_budget_usd may not exceed "
        "it and is this when left out",
    )
    max_run_budget_usd = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_value=1_000_000,
        decimal_places=2,
        label="Ceiling per variant and repository (USD)",
        help_text="empty: none; a spec's budget_usd may not exceed it and is this when left out",
    )

    @classmethod
    def for_provider(cls, provider) -> "ProviderForm":
        """The form filled with a stored provider's values (never its key), to change it."""
        fields = ("name", "api_style", "base_url", "input_usd_per_mtok", "output_usd_per_mtok")
        initial = {f: getattr(provider, f) for f in fields}
        initial["allowed_models"] = ", ".join(provider.allowed_models)
        initial["max_campaign_budget_usd"] = provider.max_campaign_budget_usd
        initial["max_run_budget_usd"] = provider.max_run_budget_usd
        return cls(initial=initial)

    def cleaned_models(self) -> list[str]:
        return [m.strip() for m in self.cleaned_data["allowed_models"].split(",") if m.strip()]
