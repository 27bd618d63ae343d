"""Sandboxes of finished variants are terminated off the run's path (campaigns/teardown.py):
once the worker's last run returns, every sandbox is terminated, recorded and its workspace
gone, before the campaign completes."""

import json

import pytest

from audit.models import AuditEvent
from campaigns.models import CampaignState, RepoRun, RunState
from campaigns.pipeline import run_execute
from campaigns.services import campaign_create, campaign_launch
from sandboxes.models import Sandbox, SandboxSnapshot, SandboxState
from sandboxes.services import backend_get, sandbox_handle
from tests.factories import repos_make, spec_for

pytestmark = pytest.mark.shapes("embedded", "production")


def test_a_chain_of_runs_leaves_every_sandbox_terminated_before_the_campaign_completes(
    transactional_db, manager
):
    tag, _ = repos_make(3)
    spec = spec_for(tag, name="teardown-chain", backend="bwrap", max_parallel=1)
    campaign = campaign_launch(campaign=campaign_create(actor=manager, source=spec), actor=manager)
    first = RepoRun.objects.filter(campaign=campaign, state=RunState.QUEUED).get()

    # One call carries the three runs (each hands its slot to the next).
    assert run_execute(run_id=first.pk) == "succeeded"

    runs = RepoRun.objects.filter(campaign=campaign)
    assert sorted(runs.values_list("state", flat=True)) == [RunState.SUCCEEDED] * 3
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.COMPLETED
    sandboxes = list(Sandbox.objects.filter(campaign_id=campaign.pk))
    assert sandboxes and all(s.state == SandboxState.TERMINATED for s in sandboxes)
    engine = backend_get("bwrap")
    for sandbox in sandboxes:
        assert not engine.workspace_path(sandbox_handle(sandbox)).exists()
        events = AuditEvent.objects.filter(
            action="sandbox.sandbox.terminated", target_id=str(sandbox.pk)
        )
        assert events.count() == 1
        assert sandbox.terminated_at <= campaign.finished_at


def test_a_finished_variants_sandbox_is_left_to_the_teardown_thread(transactional_db, manager):
    """The run's own cleanup does not terminate again, on the run's path, a sandbox already
    queued for the teardown thread: each variant's sandbox ends as "variant finished"."""
    tag, _ = repos_make(4)
    spec = spec_for(tag, name="teardown-left", backend="bwrap", max_parallel=1)
    campaign = campaign_launch(campaign=campaign_create(actor=manager, source=spec), actor=manager)
    first = RepoRun.objects.filter(campaign=campaign, state=RunState.QUEUED).get()

    assert run_execute(run_id=first.pk) == "succeeded"

    variant_sandboxes = Sandbox.objects.filter(campaign_id=campaign.pk, owner_kind="variant")
    assert variant_sandboxes.count() == 4 * len(campaign.spec["variants"])
    reasons = set(variant_sandboxes.values_list("terminated_reason", flat=True))
    assert reasons == {"variant finished"}
    # Each run's snapshot goes once its forks are terminated (the teardown thread does both).
    snapshots = SandboxSnapshot.objects.filter(owner_kind="run", owner_id__in=runs_ids(campaign))
    assert snapshots.count() == 4
    assert not snapshots.filter(deleted_at=None).exists()


def runs_ids(campaign) -> list[int]:
    return list(RepoRun.objects.filter(campaign=campaign).values_list("pk", flat=True))


def test_a_sandbox_a_person_ended_before_its_teardown_keeps_their_record(db, manager):
    """The teardown thread does not read the run's sandbox again (`fresh`): one a person
    terminated meanwhile is left as they ended it, with one `terminated` event, theirs."""
    from campaigns.teardown import sandbox_terminate_logged
    from sandboxes.backends.base import SandboxSpec
    from sandboxes.services import sandbox_create, sandbox_terminate

    run_copy = sandbox_create(spec=SandboxSpec(), backend="bwrap")
    sandbox_terminate(
        sandbox=Sandbox.objects.get(pk=run_copy.pk), reason="stopped by hand", actor=manager
    )
    assert run_copy.state == SandboxState.RUNNING  # what the run still holds

    sandbox_terminate_logged(run_copy, "variant finished")

    record = Sandbox.objects.get(pk=run_copy.pk)
    assert (record.state, record.terminated_reason) == (SandboxState.TERMINATED, "stopped by hand")
    assert record.terminated_by == manager
    events = AuditEvent.objects.filter(
        action="sandbox.sandbox.terminated", target_id=str(run_copy.pk)
    )
    assert [json.loads(e.body)["reason"] for e in events] == ["stopped by hand"]
    assert not backend_get("bwrap").workspace_path(sandbox_handle(run_copy)).exists()
