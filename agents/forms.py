"""The model provider form (admins). The key field is write-only: left empty it keeps the key."""

from django import forms

from agents.models import ApiStyle


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

    def cleaned_models(self) -> list[str]:
        return [m.strip() for m in self.cleaned_data["allowed_models"].split(",") if m.strip()]
