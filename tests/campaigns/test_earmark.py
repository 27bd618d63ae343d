"""Checkouts made ahead (PostgreSQL): a run's end hands its slot to the campaign's next pending
run and earmarks the one after it for the same worker, whose repository is then checked out
while the handed run is carried. An earmark is a hint: the worker that made it takes that run
first, other workers take unmarked runs first, and a marked run is never left behind."""

import subprocess
import threading

import pytest
from django.conf import settings

from campaigns.dispatch import run_succeed, slot_handoff
from campaigns.models import RepoRun, RunState
from campaigns.pipeline import run_execute
from campaigns.services import campaign_create, campaign_launch
from sandboxes.repos import STAGING
from tests.factories import campaign_make, repos_make, run_make
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _campaign_with_runs(manager, pending: int):
    """A dispatching campaign with one running run (worker w1) and `pending` pending runs."""
    campaign = campaign_make(owner=manager, variants=("a",))
    running = run_make(campaign=campaign, state=RunState.RUNNING)
    RepoRun.objects.filter(pk=running.pk).update(worker="w1")
    return (
        campaign,
        running,
        [run_make(campaign=campaign, state=RunState.PENDING) for _ in range(pending)],
    )


def test_a_run_end_hands_its_slot_on_and_earmarks_the_run_after_it(manager):
    campaign, running, pending = _campaign_with_runs(manager, 3)

    end = run_succeed(run_id=running.pk, campaign_id=campaign.pk, worker="w1", earmark=True)

    assert end.moved and end.next_id == pending[0].pk
    assert end.earmarked is not None and end.earmarked.run_id == pending[1].pk
    assert (end.earmarked.url, end.earmarked.ref) == (pending[1].repository.url, "main")
    states = dict(RepoRun.objects.filter(campaign=campaign).values_list("pk", "state"))
    assert states[pending[0].pk] == RunState.RUNNING
    assert states[pending[1].pk] == states[pending[2].pk] == RunState.PENDING
    assert RepoRun.objects.get(pk=pending[1].pk).worker == "w1"  # the mark
    assert RepoRun.objects.get(pk=pending[2].pk).worker == ""


def test_the_worker_takes_its_earmarked_run_first_and_others_take_unmarked_ones(manager):
    campaign, _, pending = _campaign_with_runs(manager, 3)
    RepoRun.objects.filter(pk=pending[0].pk).update(worker="w1")  # w1's earmark
    RepoRun.objects.filter(pk=pending[2].pk).update(worker="w9")  # a worker that died

    # w2 skips w1's mark, on the lowest id, and takes the first unmarked run.
    assert slot_handoff(campaign_id=campaign.pk, worker="w2") == pending[1].pk
    # w1 takes its own mark.
    assert slot_handoff(campaign_id=campaign.pk, worker="w1", mine=pending[0].pk) == pending[0].pk
    # Only a dead worker's mark is left: it is taken all the same.
    assert slot_handoff(campaign_id=campaign.pk, worker="w2") == pending[2].pk
    assert RepoRun.objects.get(pk=pending[2].pk).worker == "w2"
    assert slot_handoff(campaign_id=campaign.pk, worker="w2") is None


def test_a_worker_takes_its_earmark_before_lower_unmarked_runs(manager):
    campaign, _, pending = _campaign_with_runs(manager, 2)
    RepoRun.objects.filter(pk=pending[1].pk).update(worker="w1")

    assert slot_handoff(campaign_id=campaign.pk, worker="w1", mine=pending[1].pk) == pending[1].pk


def test_an_earmark_someone_else_took_falls_back_to_the_first_unmarked_run(manager):
    campaign, running, pending = _campaign_with_runs(manager, 3)
    RepoRun.objects.filter(pk=pending[0].pk).update(worker="w1")
    assert slot_handoff(campaign_id=campaign.pk, worker="w2", mine=pending[0].pk) == pending[0].pk

    end = run_succeed(
        run_id=running.pk, campaign_id=campaign.pk, worker="w1", mine=pending[0].pk, earmark=True
    )

    assert end.next_id == pending[1].pk
    assert end.earmarked.run_id == pending[2].pk


def test_nothing_is_earmarked_when_the_slot_did_not_go_on(manager):
    campaign, running, pending = _campaign_with_runs(manager, 2)
    campaign.state = "paused"
    campaign.save(update_fields=["state"])

    end = run_succeed(run_id=running.pk, campaign_id=campaign.pk, worker="w1", earmark=True)

    assert end.moved and end.next_id is None and end.earmarked is None
    assert set(
        RepoRun.objects.filter(pk__in=[p.pk for p in pending]).values_list("worker", flat=True)
    ) == {""}


SED = "s/assertEquals(/assertEqual(/g"
SLOW_SPEC = """\
name: earmarks
backend: bwrap
repos: {{tag: {tag}}}
max_parallel: 1
transform: {{run: "{sleep}git ls-files -z -- '*.py' | xargs -0 sed -i '{expression}'"}}
"""


def _staging_empty() -> bool:
    root = settings.DATA_DIR / "sandboxes" / STAGING
    return not root.exists() or not any(root.iterdir())


def _head(path) -> str:
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "main"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_runs_carried_one_after_another_get_their_own_repository_checked_out_ahead(manager):
    tag, paths = repos_make(4)
    heads = {f"file://{p}": _head(p) for p in paths}
    assert len(set(heads.values())) == 4  # else a mixed-up checkout could go unnoticed
    campaign = campaign_create(
        actor=manager, source=SLOW_SPEC.format(tag=tag, sleep="", expression=SED)
    )
    campaign = campaign_launch(campaign=campaign, actor=manager)
    first = RepoRun.objects.get(campaign=campaign, state=RunState.QUEUED)

    assert run_execute(run_id=first.pk) == "succeeded"

    runs = RepoRun.objects.filter(campaign=campaign).select_related("repository")
    assert [r.state for r in runs] == [RunState.SUCCEEDED] * 4
    for run in runs:
        assert run.base_commit == heads[run.repository.url], run.repository.url
        variant = run.variants.get()
        assert variant.files_changed == 1
    wait_for(_staging_empty, timeout=30, what="the checkouts made ahead to be used or removed")


def test_a_checkout_made_ahead_for_a_run_another_worker_took_is_removed(manager):
    tag, paths = repos_make(3)
    heads = {f"file://{p}": _head(p) for p in paths}
    # The runs' transform takes a while, so the earmarked run can be taken during it.
    campaign = campaign_create(
        actor=manager, source=SLOW_SPEC.format(tag=tag, sleep="sleep 2; ", expression=SED)
    )
    campaign = campaign_launch(campaign=campaign, actor=manager)
    runs = list(RepoRun.objects.filter(campaign=campaign).order_by("pk"))
    outcome = {}
    carrier = threading.Thread(target=lambda: outcome.update(r=run_execute(run_id=runs[0].pk)))
    carrier.start()
    try:
        # The first run's end hands runs[1] on and earmarks runs[2]; another worker takes it.
        wait_for(
            lambda: (
                RepoRun.objects.filter(pk=runs[2].pk, state=RunState.PENDING)
                .exclude(worker="")
                .exists()
            ),
            timeout=60,
            what="the third run to be earmarked",
        )
        taken = slot_handoff(campaign_id=campaign.pk, worker="w-other", mine=runs[2].pk)
        assert taken == runs[2].pk
    finally:
        carrier.join(timeout=120)
    assert outcome["r"] == "succeeded"

    states = dict(RepoRun.objects.filter(campaign=campaign).values_list("pk", "state"))
    assert [states[r.pk] for r in runs] == [
        RunState.SUCCEEDED,
        RunState.SUCCEEDED,
        RunState.RUNNING,
    ]
    second = RepoRun.objects.select_related("repository").get(pk=runs[1].pk)
    assert second.base_commit == heads[second.repository.url]
    wait_for(_staging_empty, timeout=30, what="the unused checkout to be removed")
    RepoRun.objects.filter(pk=runs[2].pk).update(state=RunState.CANCELLED)  # no one carries it
