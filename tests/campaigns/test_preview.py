"""Preview before launch: a draft runs on a sample, is not launched and publishes nothing; the
launch then adds the rest and keeps the sample's results; the page shows diffs and validation.
Also: max_parallel counts sandboxes, with a host-wide cap."""

import json

import pytest

from audit.models import AuditEvent
from campaigns.dispatch import host_sandbox_cap, run_sandbox_slots, runs_dispatch
from campaigns.models import Campaign, CampaignState, RepoRun, RunState
from campaigns.preview import campaign_preview
from campaigns.services import campaign_create, campaign_launch, campaign_update, runs_create
from campaigns.states import CampaignStateError
from core.errors import Invalid
from tests.factories import campaign_completed, repos_make, runs_final, spec_for


def _payload(action: str) -> dict:
    return json.loads(AuditEvent.objects.get(action=action).body)["payload"]


pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]


def test_preview_runs_a_sample_then_launch_adds_the_rest(client, manager, celery_worker):
    tag, _ = repos_make(4)
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="sample"))
    client.force_login(manager)
    page = client.post(f"/campaigns/{campaign.pk}/preview/", {"sample": "2"}, follow=True)
    assert page.status_code == 200
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.PREVIEWING and campaign.launched_at is None
    assert not AuditEvent.objects.filter(action="campaign.campaign.launched").exists()
    assert _payload("campaign.campaign.previewed")["sample"] == 2
    runs_final(campaign)
    sample = set(RepoRun.objects.filter(campaign=campaign).values_list("pk", flat=True))
    assert len(sample) == 2

    page = client.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert 'data-testid="preview-results"' in page and "Preview on 2 repositories" in page
    assert "validation failed" in page and "validate[0]" in page  # service-00's aggressive
    assert "+        self.assertEqual(add(0, 1), 1)" in page  # its diffs, escaped text
    assert "Launch the rest" in page

    with pytest.raises(CampaignStateError):  # a preview is not previewed again
        campaign_preview(campaign=campaign, actor=manager)
    campaign = campaign_launch(campaign=campaign, actor=manager)
    campaign_completed(campaign)
    runs = RepoRun.objects.filter(campaign=campaign)
    assert runs.count() == 4 and sample < set(runs.values_list("pk", flat=True))
    assert set(runs.filter(pk__in=sample).values_list("attempt", flat=True)) == {1}
    launched = _payload("campaign.campaign.launched")
    assert launched["previewed"] == 2 and launched["runs"] == 4


def test_editing_a_finished_preview_discards_it(manager):
    tag, _ = repos_make(2)
    source = spec_for(tag, name="again")
    changed = source.replace("max_parallel: 4", "max_parallel: 2")
    campaign = campaign_preview(
        campaign=campaign_create(actor=manager, source=source), actor=manager, sample=1
    )
    with pytest.raises(CampaignStateError, match="still running"):
        campaign_update(campaign=campaign, actor=manager, source=changed)
    RepoRun.objects.filter(campaign=campaign).update(state=RunState.SUCCEEDED)  # it finished
    same = campaign_update(campaign=campaign, actor=manager, source=source + "# a comment\n")
    assert same.state == CampaignState.PREVIEWING and same.runs.count() == 1
    redone = campaign_update(campaign=campaign, actor=manager, source=changed)
    assert redone.state == CampaignState.DRAFT and not redone.runs.exists()


def test_preview_sample_bounds(manager):
    tag, _ = repos_make(1)
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="bounds"))
    with pytest.raises(Invalid):
        campaign_preview(campaign=campaign, actor=manager, sample=0)
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.DRAFT


def test_max_parallel_counts_sandboxes_and_the_host_cap_applies(manager, settings):
    cap = host_sandbox_cap()
    assert cap >= 1
    # three variants hold three sandboxes; never more than max_parallel or the host cap
    assert run_sandbox_slots(variants=3, max_parallel=8, backend="remote") == 3
    assert run_sandbox_slots(variants=6, max_parallel=2, backend="remote") == 2
    assert run_sandbox_slots(variants=1, max_parallel=8, backend="bwrap") == 1
    assert run_sandbox_slots(variants=3, max_parallel=8, backend="bwrap") == min(3, cap)

    tag, _ = repos_make(5)
    settings.MAX_PARALLEL_REPOS = 100
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="slots", max_parallel="6"))
    Campaign.objects.filter(pk=campaign.pk).update(state=CampaignState.RUNNING)
    runs_create(campaign, actor=None)
    runs_dispatch()
    active = RepoRun.objects.filter(campaign=campaign, state=RunState.QUEUED).count()
    per_run = run_sandbox_slots(variants=3, max_parallel=6, backend=campaign.backend)
    assert active == min(6, cap) // per_run  # sandboxes, not repositories
    assert active * per_run <= min(6, cap)
