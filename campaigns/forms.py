"""Forms: a campaign spec as YAML, and a secret (write-only)."""

from django import forms

from campaigns.spec import MAX_SPEC_BYTES, CampaignSpecError


class CampaignSpecForm(forms.Form):
    spec = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 28, "cols": 100, "spellcheck": "false"}),
        max_length=MAX_SPEC_BYTES,
        label="Campaign spec (YAML)",
    )

    def add_spec_errors(self, exc: CampaignSpecError) -> None:
        for error in exc.errors:
            self.add_error("spec", str(error))


class SecretForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="An environment variable name")
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; it is never shown again.",
    )
