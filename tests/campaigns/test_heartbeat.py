"""Run leases: the worker process's one lease thread keeps every run it carries fresh, and
notices at once a run that was cancelled or taken away, which its executor then stops."""

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.heartbeat import RunHeartbeat
from campaigns.models import RepoRun, RunState
from tests.factories import campaign_make, run_make

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.shapes("embedded", "production"),
]


def _until(condition, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _lease_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "run-leases"]


def test_one_thread_keeps_every_carried_run_fresh_and_notices_one_taken_away(settings, manager):
    settings.RUN_LEASE_S = 2  # a refresh every 0.67 s
    campaign = campaign_make(owner=manager)
    stale = timezone.now() - timedelta(minutes=5)
    runs = [run_make(campaign=campaign, state=RunState.RUNNING) for _ in range(2)]
    RepoRun.objects.filter(pk__in=[r.pk for r in runs]).update(worker="w1", heartbeat_at=stale)
    leases = [RunHeartbeat(run.pk, "w1") for run in runs]
    for lease in leases:
        lease.start()
    try:
        assert len(_lease_threads()) == 1
        fresh = RepoRun.objects.filter(pk__in=[r.pk for r in runs], heartbeat_at__gt=stale)
        _until(lambda: fresh.count() == 2)
        assert not any(lease.lost.is_set() for lease in leases)

        # Requeued and claimed by another worker: only that run's lease is lost.
        RepoRun.objects.filter(pk=runs[0].pk).update(worker="w2")
        taken = RepoRun.objects.get(pk=runs[0].pk).heartbeat_at
        _until(leases[0].lost.is_set)
        assert not leases[1].lost.is_set()
        # A cancelled run is not running any more: its lease is lost too.
        RepoRun.objects.filter(pk=runs[1].pk).update(state=RunState.CANCELLED)
        _until(leases[1].lost.is_set)
        # The other worker's lease is never refreshed by this one.
        assert RepoRun.objects.get(pk=runs[0].pk).heartbeat_at == taken
    finally:
        for lease in leases:
            lease.stop()
    _until(lambda: not _lease_threads())  # nothing left to keep: the thread ends


def test_a_stopped_lease_is_no_longer_refreshed(settings, manager):
    settings.RUN_LEASE_S = 2
    campaign = campaign_make(owner=manager)
    carried, done = (run_make(campaign=campaign, state=RunState.RUNNING) for _ in range(2))
    stale = timezone.now() - timedelta(minutes=5)
    RepoRun.objects.filter(pk__in=[carried.pk, done.pk]).update(worker="w1", heartbeat_at=stale)
    keep, ended = RunHeartbeat(carried.pk, "w1"), RunHeartbeat(done.pk, "w1")
    keep.start()
    ended.start()
    ended.stop()
    try:
        _until(lambda: RepoRun.objects.get(pk=carried.pk).heartbeat_at > stale)
        assert RepoRun.objects.get(pk=done.pk).heartbeat_at == stale
    finally:
        keep.stop()
    _until(lambda: not _lease_threads())
