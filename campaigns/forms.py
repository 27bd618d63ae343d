"""Forms: a campaign spec as YAML (checked as the service will check it), and a secret."""

from django import forms
from django.core.validators import RegexValidator

from campaigns.secrets import SECRET_NAME_RE
from campaigns.services import campaign_spec_check
from campaigns.spec import MAX_SPEC_BYTES, CampaignSpecError


class CampaignSpecForm(forms.Form):
    spec = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 28, "cols": 100, "spellcheck": "false"}),
        max_length=MAX_SPEC_BYTES,
        label="Campaign spec (YAML)",
    )

    def clean_spec(self) -> str:
        """Every problem beside the field, each as `path: message (line N)`. The service checks
        again when it saves (a name taken since then is refused there, as a 422 page)."""
        text = self.cleaned_data["spec"]
        try:
            campaign_spec_check(source=text)
        except CampaignSpecError as exc:
            raise forms.ValidationError([str(error) for error in exc.errors]) from None
        return text


class SecretForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="An environment variable name",
        validators=[
            RegexValidator(
                SECRET_NAME_RE, "use letters, digits and '_' (an environment variable name)"
            )
        ],
    )
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; it is never shown again.",
    )
