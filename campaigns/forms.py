"""Forms: a campaign spec as YAML (checked as the service will check it: the live check and
the submit use this one form), a preview's sample size, and a secret."""

from django import forms
from django.core.validators import RegexValidator

from campaigns.preview import PREVIEW_SAMPLE, PREVIEW_SAMPLE_MAX
from campaigns.revisions import revision_plan
from campaigns.secrets import SECRET_NAME_RE
from campaigns.services import campaign_spec_check
from campaigns.spec import MAX_SPEC_BYTES, CampaignSpecError

# What the new-campaign editor starts with: every section a first campaign needs.
STARTER_SPEC = """\
name: my-campaign
description: What this change does, in one line
repos: {tag: my-tag}          # or a list: [{url: https://…/repo.git, ref: main}]
setup:
  - run: test -f README.md
transform:
  run: sed -i 's/old/new/g' README.md
variants:
  - {name: default, env: {}}
validate:
  - run: "true"
changeset:
  branch: convoy/my-campaign
  title: My campaign
"""


class CampaignSpecForm(forms.Form):
    spec = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 28, "cols": 100, "spellcheck": "false"}),
        max_length=MAX_SPEC_BYTES,
        label="Campaign spec (YAML)",
    )

    def __init__(self, *args, campaign=None, actor=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.campaign = campaign
        self.actor = actor

    def clean_spec(self) -> str:
        """Every problem beside the field, each as `path: message (line N)`. The service checks
        again when it saves (a name taken since then is refused there, as a 422 page). A
        launched campaign's new spec is checked as its revision would be."""
        text = self.cleaned_data["spec"]
        campaign = self.campaign
        try:
            if campaign is not None and campaign.state not in ("draft", "previewing"):
                revision_plan(campaign=campaign, source=text, actor=self.actor)
            else:
                # As the save will check it: the grants, for the owner it will have.
                owner = campaign.owner_id if campaign else getattr(self.actor, "pk", None)
                campaign_spec_check(
                    source=text,
                    exclude_pk=campaign.pk if campaign else None,
                    owner_id=owner,
                    editor=self.actor,
                )
        except CampaignSpecError as exc:
            raise forms.ValidationError([str(error) for error in exc.errors]) from None
        return text


class PreviewForm(forms.Form):
    sample = forms.IntegerField(
        min_value=1,
        max_value=PREVIEW_SAMPLE_MAX,
        initial=PREVIEW_SAMPLE,
        label="Repositories in the sample",
    )


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
