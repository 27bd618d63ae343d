"""Edit and re-apply: a finished campaign takes a new revision that re-runs only what changed,
adds new repositories, keeps decisions whose diff comes out the same, and is listed."""

import json

import pytest

from audit.models import AuditEvent
from campaigns.models import Campaign, CampaignRevision, CampaignState, RepoRun, Variant
from campaigns.revisions import campaign_revise, revision_plan
from campaigns.services import campaign_create, campaign_launch, campaign_update, runs_create
from campaigns.spec import CampaignSpecError
from campaigns.states import CampaignStateError
from review.models import RunReview
from review.selectors import review_is_approved
from review.services import change_approve
from tests.factories import campaign_completed, repos_make, spec_for


def _payload(action: str) -> dict:
    return json.loads(AuditEvent.objects.get(action=action).body)["payload"]


pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]


def _variants(campaign) -> dict[tuple[str, str], Variant]:
    return {
        (v.run.repository.name, v.name): v
        for v in Variant.objects.filter(run__campaign=campaign).select_related("run__repository")
    }


def test_a_revision_reruns_only_the_changed_variant_and_adds_new_repositories(
    manager, reviewer, celery_worker
):
    tag, _ = repos_make(2)
    source = spec_for(tag, name="rev")
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=source), actor=manager
    )
    campaign_completed(campaign)
    before = _variants(campaign)
    # decisions: one on a variant the revision leaves alone, one on the variant it re-runs
    kept = before[("service-00", "standard")]
    rerun = before[("service-01", "aggressive")]
    for v in (kept, rerun):
        change_approve(run=v.run, actor=reviewer, diff_hash=v.diff_sha256, variant=v)

    repos_make(3, tag=tag)  # service-02 joins the tag
    edited = source.replace(
        "{name: aggressive, env: {STYLE: aggressive}}",
        "{name: aggressive, env: {STYLE: aggressive, EXTRA: '1'}}",
    )
    plan = revision_plan(campaign=campaign, source=edited, actor=manager)
    assert plan["changed_variants"] == ["aggressive"] and not plan["rerun_all"]
    assert plan["new_repositories"] == ["service-02"] and plan["runs_to_rerun"] == 2
    assert "+  - {name: aggressive, env: {STYLE: aggressive, EXTRA: '1'}}" in plan["spec_diff"]
    assert not CampaignRevision.objects.exists()  # a plan writes nothing

    revision = campaign_revise(campaign=campaign, actor=manager, source=edited)
    assert revision.number == 2
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.RUNNING
    campaign_completed(campaign)

    after = _variants(campaign)
    assert len(after) == 9  # three repositories now
    for key, old in before.items():
        new = after[key]
        if key[1] == "aggressive":  # re-ran: a new execution, the same diff
            assert new.attempt == old.attempt + 1 and new.finished_at > old.finished_at
        else:  # untouched
            assert (new.attempt, new.finished_at) == (old.attempt, old.finished_at)
        assert new.diff_sha256 == old.diff_sha256
    assert RepoRun.objects.get(campaign=campaign, repository__name="service-02").attempt == 1
    for v in (kept, rerun):  # both decisions still hold: their diffs did not change
        review = RunReview.objects.get(run=v.run)
        assert review_is_approved(review, Variant.objects.get(pk=v.pk))

    numbers = list(campaign.revisions.order_by("number").values_list("number", flat=True))
    assert numbers == [1, 2]
    event = _payload("campaign.campaign.revised")
    assert event["runs_rerun"] == 2 and event["runs_added"] == 1


def test_a_revision_refuses_drafts_renames_and_no_change(manager):
    tag, _ = repos_make(1)
    source = spec_for(tag, name="fixed")
    campaign = campaign_create(actor=manager, source=source)
    with pytest.raises(CampaignStateError):
        campaign_revise(campaign=campaign, actor=manager, source=source + "\n# edited\n")
    Campaign.objects.filter(pk=campaign.pk).update(state=CampaignState.COMPLETED)
    campaign.refresh_from_db()
    runs_create(campaign, actor=None)  # as its launch made them
    with pytest.raises(CampaignStateError, match="unchanged"):
        campaign_revise(campaign=campaign, actor=manager, source=source)
    with pytest.raises(CampaignSpecError, match="keeps the campaign's name"):
        revision_plan(
            campaign=campaign, source=source.replace("name: fixed", "name: other"), actor=manager
        )
    with pytest.raises(CampaignStateError, match="new revision"):
        campaign_update(campaign=campaign, actor=manager, source=source)


def test_a_shared_change_reruns_every_variant(manager):
    tag, _ = repos_make(1)
    source = spec_for(tag, name="shared")
    campaign = campaign_create(actor=manager, source=source)
    Campaign.objects.filter(pk=campaign.pk).update(state=CampaignState.COMPLETED)
    campaign.refresh_from_db()
    plan = revision_plan(
        campaign=campaign,
        source=source.replace("run: test -f calc.py", "run: test -f README.md"),
        actor=manager,
    )
    assert plan["rerun_all"] and plan["shared_changes"] == ["setup"]
    assert plan["changed_variants"] == ["aggressive", "conservative", "standard"]
