"""A worker killed with SIGKILL mid-campaign: a new worker finishes every run, nothing twice."""

import contextlib
import os
import signal
import subprocess
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from campaigns.models import RepoRun, RunState, RunTransition, Variant
from campaigns.services import campaign_create, campaign_launch
from sandboxes.models import Sandbox, SandboxCommand, SandboxState
from sandboxes.services import backend_get
from tests.factories import campaign_completed, repos_make, spec_for
from tests.support import (
    PYTHON,
    ROOT,
    host_processes,
    process_stop,
    subprocess_env,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

TRANSFORM = "python3 $CONVOY_FILES/fix.py --style $STYLE"


def _worker(name: str) -> subprocess.Popen:
    """A real `celery worker` with beat (the tick that requeues runs whose lease expired)."""
    log = (settings.DATA_DIR / f"{name}.log").open("w")
    return subprocess.Popen(
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--beat",
            "--schedule",
            str(settings.DATA_DIR / f"{name}-beat"),
            "--pool",
            "threads",
            "-c",
            "4",
            "--hostname",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=subprocess_env(CONVOY_RUN_LEASE_S="3"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # --beat runs in a child process: kill the whole group
    )


def _group_kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_sigkill_mid_campaign_then_new_worker_finishes_without_duplicates(manager):
    tag, _ = repos_make(8)
    spec = spec_for(tag, name="resume", backend="bwrap", max_parallel=4)
    spec = spec.replace(f"run: {TRANSFORM}", f"run: sleep 1 && {TRANSFORM}")
    campaign = campaign_create(actor=manager, source=spec)
    first = _worker("worker-a")
    second = None
    try:
        campaign_launch(campaign=campaign, actor=manager)
        runs = RepoRun.objects.filter(campaign=campaign)

        def mid_campaign():
            states = list(runs.values_list("state", flat=True))
            # A variant that started under 0.5 s ago is still in its transform's `sleep 1`
            # when the kill lands (one about to finish might complete in between).
            transforming = Variant.objects.filter(
                run__campaign=campaign,
                state="running",
                started_at__gt=timezone.now() - timedelta(seconds=0.5),
            )
            return RunState.SUCCEEDED in states and transforming.exists()

        wait_for(
            mid_campaign, timeout=90, interval=0.05, what="some runs done, some variants running"
        )
        _group_kill(first)  # kill -9 the worker (and its beat child)
        assert runs.filter(state=RunState.RUNNING).exists()
        killed_at = timezone.now()
        done_before = {
            v.pk: (v.sandbox_id, v.finished_at, v.diff_sha256)
            for v in Variant.objects.filter(run__campaign=campaign, state="completed")
        }
        assert done_before

        second = _worker("worker-b")
        campaign_completed(campaign, timeout=180)
    finally:
        _group_kill(first)
        if second is not None:
            process_stop(second)
            _group_kill(second)

    assert set(runs.values_list("state", flat=True)) == {RunState.SUCCEEDED}
    # At least one run was taken over from the dead worker.
    assert RunTransition.objects.filter(
        campaign=campaign, from_state=RunState.RUNNING, to_state=RunState.QUEUED
    ).exists()
    variants = Variant.objects.filter(run__campaign=campaign)
    assert variants.count() == 8 * 3
    for variant in variants:
        assert variant.state == "completed", (variant, variant.error)
        assert variant.diff.count("+        self.assertEqual(") == 2
        sandboxes = Sandbox.objects.filter(variant_id=variant.pk)
        # At most one sandbox per execution (one cut short by the kill before its fork has
        # none); that execution is the only rerun.
        assert 1 <= sandboxes.count() <= variant.attempt <= 2
        if variant.pk in done_before:
            # Completed before the kill: never touched again.
            assert done_before[variant.pk] == (
                variant.sandbox_id,
                variant.finished_at,
                variant.diff_sha256,
            )
            assert variant.attempt == 1
            assert not sandboxes.filter(created_at__gt=killed_at).exists()
            assert not SandboxCommand.objects.filter(
                sandbox__variant_id=variant.pk, started_at__gt=killed_at
            ).exists()
    assert variants.filter(attempt=2).exists(), "no variant was interrupted by the kill"
    # No sandbox left behind: every record terminated and nothing on the engine.
    assert (
        not Sandbox.objects.filter(campaign_id=campaign.pk)
        .exclude(state=SandboxState.TERMINATED)
        .exists()
    )
    assert backend_get("bwrap").list({"convoy_campaign": str(campaign.pk)}) == []
    # Nor a process: bwrap caught by the kill while starting never reached its cgroups.
    sandboxes_dir = str(settings.DATA_DIR / "sandboxes").encode()
    assert (
        host_processes(
            lambda args: args[0] == b"bwrap" and any(a.startswith(sandboxes_dir) for a in args)
        )
        == []
    )
