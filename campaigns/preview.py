"""Preview before launch: run a draft's spec on a sample of its repositories.

The sample's runs are ordinary runs (same pipeline, same sandboxes, their diffs and validation
shown as any run's), but the campaign is `previewing`, not launched: nothing is published, no
launch is recorded, and `campaign_launch` later adds the rest and keeps the sample's results.
Editing the spec after a preview deletes the sample's runs (campaign_update).
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from audit.record import audit_record
from campaigns.dispatch import runs_dispatch
from campaigns.models import Campaign, CampaignState, RepoRun, Repository
from campaigns.selectors import repository_ids_by_tag
from campaigns.services import repositories_register, spec_ceilings_check
from campaigns.states import CampaignStateError
from core.errors import Invalid

PREVIEW_SAMPLE = 3
PREVIEW_SAMPLE_MAX = 20


def _sample(campaign: Campaign, size: int, actor) -> list[tuple[int, str]]:
    """(repository id, ref) of the first `size` repositories the spec names, in its order."""
    repos = campaign.spec["repos"]
    if isinstance(repos, dict):
        ids = sorted(repository_ids_by_tag(repos["tag"]))[:size]
        refs = dict(Repository.objects.filter(pk__in=ids).values_list("pk", "default_ref"))
        return [(pk, repos.get("ref") or refs[pk]) for pk in ids]
    entries = repos[:size]
    registered = repositories_register(entries=entries, actor=actor)
    return [(r.pk, e.get("ref") or r.default_ref) for r, e in zip(registered, entries, strict=True)]


def campaign_preview(*, campaign: Campaign, actor, sample: int = PREVIEW_SAMPLE) -> Campaign:
    """Run a draft on its first `sample` repositories; it stays unlaunched (`previewing`)."""
    if not 1 <= sample <= PREVIEW_SAMPLE_MAX:
        raise Invalid(
            f"the sample must be between 1 and {PREVIEW_SAMPLE_MAX} repositories", field="sample"
        )
    spec_ceilings_check(campaign.spec)
    with transaction.atomic():
        moved = Campaign.objects.filter(pk=campaign.pk, state=CampaignState.DRAFT).update(
            state=CampaignState.PREVIEWING, updated_at=timezone.now()
        )
        if not moved:
            campaign.refresh_from_db()
            raise CampaignStateError(f"campaign is {campaign.state}; only drafts can be previewed")
        plan = _sample(campaign, sample, actor)
        if not plan:
            raise CampaignStateError("the campaign matches no repositories")
        RepoRun.objects.bulk_create(
            [RepoRun(campaign_id=campaign.pk, repository_id=pk, ref=ref) for pk, ref in plan]
        )
        audit_record(
            action="campaign.campaign.previewed",
            actor=actor,
            target=campaign,
            context={"campaign_id": campaign.pk},
            payload={"sample": len(plan), "backend": campaign.backend},
            changes={"state": [CampaignState.DRAFT, CampaignState.PREVIEWING]},
        )
        transaction.on_commit(runs_dispatch)
    campaign.refresh_from_db()
    return campaign


def preview_runs(*, campaign: Campaign) -> list[RepoRun]:
    """The sample's runs with their variants (the preview page shows their diffs)."""
    return list(
        RepoRun.objects.filter(campaign=campaign)
        .select_related("repository")
        .prefetch_related("variants")
        .order_by("id")
    )
