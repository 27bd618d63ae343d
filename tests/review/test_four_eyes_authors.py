"""Four eyes: nobody who wrote or started a campaign's changes approves them. Only the
launcher was refused: the owner of a campaign someone else launched, a manager who applied a
revision with new commands, and the launcher after a revision turning the rule off approved
their own change."""

import pytest

from accounts.services import token_create
from campaigns.models import Campaign, RepoRun, RunState
from campaigns.revisions import campaign_revise
from campaigns.services import campaign_create, campaign_launch
from campaigns.spec import CampaignSpecError
from review.models import RunReview
from review.publish_text import publish_text_for
from tests.factories import (
    campaign_make,
    patch_for,
    repos_make,
    run_make,
    spec_for,
    user_make,
    variant_make,
)

pytestmark = pytest.mark.shapes("embedded", "production")


def _approve(client, user, campaign, run, variant):
    _, raw = token_create(user=user, name="t", scope="write")
    return client.post(
        f"/api/v1/review/campaigns/{campaign.pk}/runs/{run.pk}/approve",
        {
            "variant": variant.name,
            "diff_hash": variant.diff_sha256,
            "publish_hash": publish_text_for(campaign).sha256,
        },
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )


def test_the_owner_of_a_campaign_someone_else_launched_may_not_approve(client, admin_user, manager):
    campaign = campaign_make(owner=admin_user, launched_by=manager, variants=("a",))
    run = run_make(campaign=campaign)
    a = variant_make(run=run, name="a", patch=patch_for("x.py", "1", "2"))
    assert _approve(client, admin_user, campaign, run, a).status_code == 403
    other = user_make(role="admin", username="other-admin")
    assert _approve(client, other, campaign, run, a).status_code == 200
    assert RunReview.objects.get(run=run).decided_by == other


def _launched(owner):
    tag, _ = repos_make(1)
    campaign = campaign_launch(
        campaign=campaign_create(actor=owner, source=spec_for(tag, name="fe")), actor=owner
    )
    run = RepoRun.objects.get(campaign=campaign)
    RepoRun.objects.filter(pk=run.pk).update(state=RunState.SUCCEEDED)
    Campaign.objects.filter(pk=campaign.pk).update(state="completed")
    return tag, Campaign.objects.get(pk=campaign.pk), run


def test_whoever_applied_a_revision_may_not_approve_its_changes(client, manager):
    tag, campaign, run = _launched(manager)
    zed = user_make(role="admin", username="zed")
    new = spec_for(tag, name="fe").replace(
        "python3 $CONVOY_FILES/fix.py --style $STYLE",
        "python3 $CONVOY_FILES/fix.py --style $STYLE; echo evil >> x.py",
    )
    campaign_revise(campaign=campaign, actor=zed, source=new)
    RepoRun.objects.filter(pk=run.pk).update(state=RunState.SUCCEEDED)
    run.variants.all().delete()
    v = variant_make(run=run, name="standard", patch=patch_for("x.py", "1", "evil"))
    assert _approve(client, zed, Campaign.objects.get(pk=campaign.pk), run, v).status_code == 403


def test_the_launcher_may_not_turn_the_rule_off_for_their_own_changes(admin_user):
    tag, campaign, _run = _launched(admin_user)
    off = spec_for(tag, name="fe") + "review: {four_eyes: false}\n"
    with pytest.raises(CampaignSpecError) as refused:
        campaign_revise(campaign=campaign, actor=admin_user, source=off)
    assert refused.value.errors[0].path == "review.four_eyes"
    assert Campaign.objects.get(pk=campaign.pk).four_eyes is True
    # Someone who wrote nothing of it may.
    other = user_make(role="admin", username="other-admin")
    campaign_revise(campaign=campaign, actor=other, source=off)
    assert Campaign.objects.get(pk=campaign.pk).four_eyes is False


EVIL = "python3 $CONVOY_FILES/fix.py --style $STYLE; echo evil >> x.py"


def test_one_revision_may_not_bring_new_commands_and_turn_the_rule_off(manager):
    """Else its author, who wrote nothing before it, waives the rule for their own commands."""
    tag, campaign, _run = _launched(manager)
    zed = user_make(role="admin", username="zed")
    both = spec_for(tag, name="fe").replace("python3 $CONVOY_FILES/fix.py --style $STYLE", EVIL)
    with pytest.raises(CampaignSpecError) as refused:
        campaign_revise(campaign=campaign, actor=zed, source=both + "review: {four_eyes: false}\n")
    assert refused.value.errors[0].path == "review.four_eyes"
    assert "revision of its own" in refused.value.errors[0].message
    assert Campaign.objects.get(pk=campaign.pk).four_eyes is True
    assert campaign.revisions.count() == 0  # nothing stored


def test_after_a_waiver_new_commands_bring_the_rule_back(client, admin_user):
    """Someone else waived the rule for the launcher's changes; the launcher's later commands
    are not covered: the revision must turn the rule on again, and then they may not approve."""
    tag, campaign, run = _launched(admin_user)
    other = user_make(role="admin", username="other")
    off = spec_for(tag, name="fe") + "review: {four_eyes: false}\n"
    campaign_revise(campaign=campaign, actor=other, source=off)
    campaign = Campaign.objects.get(pk=campaign.pk)
    evil = off.replace("python3 $CONVOY_FILES/fix.py --style $STYLE", EVIL)
    with pytest.raises(CampaignSpecError) as refused:
        campaign_revise(campaign=campaign, actor=admin_user, source=evil)
    assert refused.value.errors[0].path == "review.four_eyes"
    on = evil.replace("four_eyes: false", "four_eyes: true")
    campaign_revise(campaign=campaign, actor=admin_user, source=on)
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.four_eyes is True
    RepoRun.objects.filter(pk=run.pk).update(state=RunState.SUCCEEDED)
    run.variants.all().delete()
    v = variant_make(run=run, name="standard", patch=patch_for("x.py", "1", "evil"))
    assert _approve(client, admin_user, campaign, run, v).status_code == 403


def test_an_approval_stops_counting_once_its_approver_launches_the_campaign(client, manager):
    """Approve a preview's diff (not an author yet), then launch it: the approval stands on
    the page, but publishing refuses it until someone else approves."""
    from campaigns.preview import campaign_preview
    from review.models import Changeset
    from review.services import ReviewError, change_publish, changeset_push

    tag, _ = repos_make(1)
    draft = campaign_create(actor=manager, source=spec_for(tag, name="pv"))
    ada = user_make(role="admin", username="ada")
    campaign_preview(campaign=draft, actor=ada, sample=1)
    run = RepoRun.objects.get(campaign=draft)
    RepoRun.objects.filter(pk=run.pk).update(state=RunState.SUCCEEDED)
    v = variant_make(run=run, name="standard", patch=patch_for("x.py", "1", "2"))
    assert _approve(client, ada, Campaign.objects.get(pk=draft.pk), run, v).status_code == 200
    campaign_launch(campaign=Campaign.objects.get(pk=draft.pk), actor=ada)
    run = RepoRun.objects.select_related("campaign", "repository").get(pk=run.pk)
    with pytest.raises(ReviewError, match="someone else must approve it again"):
        change_publish(run=run, actor=ada)
    assert not Changeset.objects.filter(run=run).exists()
    # A change queued before its approver became an author is refused at the push.
    other = user_make(role="admin", username="bea")
    assert _approve(client, other, run.campaign, run, v).status_code == 200
    queued = change_publish(run=run, actor=other)
    RunReview.objects.filter(run=run).update(decided_by=ada)
    pushed = changeset_push(changeset_id=queued.pk)
    assert pushed.state == "failed" and "someone else must approve" in pushed.error
