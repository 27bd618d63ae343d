"""Sandbox services on a real engine (bubblewrap) and a real database: records, audit, reaping."""

import hashlib
import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from audit.chain import canonical_json
from audit.models import AuditEvent
from audit.record import AuditWriteError
from campaigns.models import Campaign
from sandboxes import reaper, services
from sandboxes.backends.base import SandboxError, SandboxSpec
from sandboxes.models import Sandbox, SandboxSnapshot, SandboxState
from sandboxes.reaper import sandboxes_reap
from sandboxes.services import (
    backend_get,
    sandbox_checkpoint,
    sandbox_create,
    sandbox_exec,
    sandbox_fork,
    sandbox_read_file,
    sandbox_snapshot,
    sandbox_terminate,
    sandbox_write_file,
    snapshot_delete,
)
from sandboxes.tasks import sandboxes_reap_task
from tests.support import events_refused, wait_for

SPEC = SandboxSpec(timeout_s=300, memory_mb=256)
both_shapes = pytest.mark.shapes("embedded", "production")


def actions(sandbox) -> list[str]:
    events = AuditEvent.objects.filter(sandbox_id=sandbox.pk).order_by("id")
    return list(events.values_list("action", flat=True))


@both_shapes
def test_exec_records_the_command_and_its_audit_trail(db, manager, engines_clean):
    sandbox = sandbox_create(spec=SPEC, backend="bwrap", on_behalf_of=manager, campaign_id=7)
    assert sandbox.state == SandboxState.RUNNING and sandbox.external_id
    seen = []
    command = sandbox_exec(
        sandbox=sandbox,
        argv=[
            "sh",
            "-c",
            'printf %s "$API_TOKEN" | sha256sum; exit 5',
        ],
        env={"MODE": "test"},
        secrets={"API_TOKEN": "s3cret-value"},
        on_output=seen.append,
    )
    output = b"".join(e.data for e in seen)
    # The command saw the secret (its digest proves it without the value in argv or logs).
    assert output.decode().split()[0] == hashlib.sha256(b"s3cret-value").hexdigest()
    command.refresh_from_db()
    assert command.exit_code == 5 and not command.timed_out and not command.truncated
    assert command.bytes_out == len(output)
    assert command.output_sha256 == hashlib.sha256(output).hexdigest()
    assert command.env_names == ["API_TOKEN", "MODE"]
    assert actions(sandbox) == [
        "sandbox.sandbox.created",
        "sandbox.exec.started",
        "sandbox.exec.completed",
    ]
    events = AuditEvent.objects.filter(sandbox_id=sandbox.pk)
    assert {(e.actor_type, e.on_behalf_of, e.campaign_id) for e in events} == {("agent", "mia", 7)}
    completed = json.loads(events.get(action="sandbox.exec.completed").body)["payload"]
    assert completed["exit_code"] == 5 and completed["output_sha256"] == command.output_sha256
    # The secret's use is on the record per sandbox and command, by name only.
    body = events.get(action="sandbox.exec.started").body
    assert canonical_json(json.loads(body)) == body  # written by one statement, still canonical
    started = json.loads(body)["payload"]
    assert started["secret_names"] == ["API_TOKEN"]
    assert started["command_id"] == completed["command_id"] == command.pk
    assert all("s3cret-value" not in e.body for e in events)
    assert "s3cret-value" not in json.dumps([command.argv, command.env_names])


@both_shapes
def test_a_command_whose_start_cannot_be_audited_never_runs(db, engines_clean):
    sandbox = sandbox_create(spec=SPEC, backend="bwrap")
    # The savepoint stands for the worker's autocommit: the test's transaction goes on after.
    with (
        events_refused("sandbox.exec.started"),
        pytest.raises(AuditWriteError, match="audit store unavailable"),
        transaction.atomic(),
    ):
        sandbox_exec(sandbox=sandbox, argv=["sh", "-c", "echo ran > ran.txt"])
    with pytest.raises(SandboxError):
        sandbox_read_file(sandbox=sandbox, path="ran.txt")
    assert not sandbox.commands.exists()  # the command's row went with its event


@both_shapes
def test_terminate_frees_the_workspace_once_and_later_commands_are_refused(
    db, admin_user, engines_clean
):
    sandbox = sandbox_create(spec=SPEC, backend="bwrap")
    workspace = backend_get("bwrap").workspace_path(services.sandbox_handle(sandbox))
    assert workspace.is_dir()
    sandbox_terminate(sandbox=sandbox, reason="done here", actor=admin_user)
    sandbox_terminate(sandbox=sandbox, reason="again", actor=admin_user)
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.TERMINATED
    assert (sandbox.terminated_reason, sandbox.terminated_by) == ("done here", admin_user)
    assert not workspace.exists()
    assert actions(sandbox).count("sandbox.sandbox.terminated") == 1
    with pytest.raises(SandboxError, match="terminated"):
        sandbox_exec(sandbox=sandbox, argv=["true"])


@both_shapes
def test_fork_gives_each_variant_the_snapshot_and_its_own_changes(db, manager, engines_clean):
    source = sandbox_create(spec=SPEC, backend="bwrap", on_behalf_of=manager)
    sandbox_write_file(sandbox=source, path="README", data=b"base\n")
    snapshot = sandbox_snapshot(sandbox=source, owner_kind="run", owner_id=11)
    forks = sandbox_fork(snapshot=snapshot, count=2, spec=SPEC, owner_kind="variant", owner_id=3)
    assert [f.from_snapshot_id for f in forks] == [snapshot.pk, snapshot.pk]
    assert all(f.on_behalf_of == manager for f in forks)
    for i, fork in enumerate(forks):
        sandbox_exec(sandbox=fork, argv=["sh", "-c", f"echo v{i} >> README"])
    assert [sandbox_read_file(sandbox=f, path="README") for f in forks] == [
        b"base\nv0\n",
        b"base\nv1\n",
    ]
    assert actions(forks[0]) == [
        "sandbox.fork.created",
        "sandbox.exec.started",
        "sandbox.exec.completed",
    ]
    assert AuditEvent.objects.filter(action="sandbox.snapshot.created").count() == 1
    with pytest.raises(SandboxError, match="running forks"):
        snapshot_delete(snapshot=snapshot)
    for sandbox in [*forks, source]:
        sandbox_terminate(sandbox=sandbox, reason="done")
    snapshot_delete(snapshot=snapshot)
    snapshot_delete(snapshot=snapshot)
    assert SandboxSnapshot.objects.get(pk=snapshot.pk).deleted_at is not None
    assert not (backend_get("bwrap").ws.layers_dir / snapshot.external_id).exists()


@both_shapes
def test_the_process_backend_is_refused_unless_explicitly_allowed(db, engines_clean):
    services._backends.pop("process", None)
    with pytest.raises(SandboxError, match="CONVOY_ALLOW_UNSAFE_PROCESS_BACKEND"):
        sandbox_create(spec=SPEC, backend="process")
    with pytest.raises(SandboxError, match="unknown sandbox backend 'docker'"):
        sandbox_create(spec=SPEC, backend="docker")
    with override_settings(ALLOW_UNSAFE_PROCESS_BACKEND=True):
        sandbox = sandbox_create(spec=SPEC, backend="process")
        assert sandbox.unsafe
        sandbox_terminate(sandbox=sandbox, reason="done")


@both_shapes
def test_reaper_ends_expired_and_ownerless_sandboxes_and_engine_orphans(
    db, monkeypatch, engines_clean
):
    expired = sandbox_create(spec=SPEC, backend="bwrap")
    Sandbox.objects.filter(pk=expired.pk).update(deadline_at=timezone.now())
    parent = sandbox_create(spec=SPEC, backend="bwrap")
    child = sandbox_create(spec=SPEC, backend="bwrap", owner_kind="sandbox", owner_id=parent.pk)
    keeper = sandbox_create(spec=SPEC, backend="bwrap", owner_kind="sandbox", owner_id=parent.pk)
    idle_spec = SandboxSpec(timeout_s=300, idle_timeout_s=60)
    idle = sandbox_create(spec=idle_spec, backend="bwrap")
    busy = sandbox_create(spec=idle_spec, backend="bwrap")
    sandbox_exec(sandbox=idle, argv=["true"])
    sandbox_exec(sandbox=busy, argv=["true"])
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Sandbox.objects.filter(pk__in=[idle.pk, busy.pk]).update(created_at=an_hour_ago)
    idle.commands.update(finished_at=an_hour_ago)
    sandbox_terminate(sandbox=parent, reason="finished")
    Sandbox.objects.filter(pk=keeper.pk).update(owner_kind="cli", owner_id=None)
    engine = backend_get("bwrap")
    orphan = engine.create(SPEC)  # on the engine, but no record names it
    monkeypatch.setattr(reaper, "ORPHAN_GRACE_S", 0)

    reaped = sandboxes_reap()

    assert {s.pk for s in reaped} == {expired.pk, child.pk, idle.pk}
    assert Sandbox.objects.get(pk=idle.pk).terminated_reason == "reaped: idle for more than 60 s"
    assert Sandbox.objects.get(pk=busy.pk).state == SandboxState.RUNNING
    expired.refresh_from_db()
    child.refresh_from_db()
    assert expired.terminated_reason == "reaped: deadline passed"
    assert child.terminated_reason == f"reaped: owner sandbox {parent.pk} is gone or done"
    assert Sandbox.objects.get(pk=keeper.pk).state == SandboxState.RUNNING
    assert orphan.external_id not in {h.external_id for h in engine.list({})}
    assert not engine.ws.dir(orphan.external_id).exists()
    event = AuditEvent.objects.get(action="sandbox.orphan.reaped")
    assert orphan.external_id in event.body and event.actor_type == "system"
    assert sandboxes_reap() == []


def test_the_periodic_reaper_task_runs_on_a_real_worker(celery_worker, engines_clean):
    sandbox = sandbox_create(spec=SPEC, backend="bwrap")
    Sandbox.objects.filter(pk=sandbox.pk).update(deadline_at=timezone.now())
    sandboxes_reap_task.delay()
    wait_for(
        lambda: Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.TERMINATED,
        timeout=60,
        what="the worker's reaper to terminate the expired sandbox",
    )
    assert not backend_get("bwrap").ws.dir(sandbox.external_id).exists()


def test_a_memory_checkpoint_forks_into_running_copies(db, manager, engines_clean):
    source = sandbox_create(spec=SPEC, backend="gvisor", on_behalf_of=manager)
    loop = "n=0; while :; do n=$((n+1)); echo $n > /tmp/m; mv /tmp/m /tmp/n; sleep 0.05; done"
    sandbox_exec(sandbox=source, argv=["sh", "-c", f"({loop}) >/dev/null 2>&1 &"])
    checkpoint = sandbox_checkpoint(sandbox=source)
    copies = sandbox_fork(snapshot=checkpoint, count=2, spec=SPEC)
    for copy in copies:
        seen = []
        sandbox_exec(
            sandbox=copy, argv=["sh", "-c", "sleep 0.2; cat /tmp/n"], on_output=seen.append
        )
        assert int(b"".join(e.data for e in seen)) > 0  # the counter kept counting in the copy
    event = AuditEvent.objects.get(action="sandbox.snapshot.created", sandbox_id=source.pk)
    assert json.loads(event.body)["payload"]["kind"] == "memory"
    for sandbox in [*copies, source]:
        sandbox_terminate(sandbox=sandbox, reason="done")
    snapshot_delete(snapshot=checkpoint)
    assert not (backend_get("gvisor").checkpoints / checkpoint.external_id).exists()


@both_shapes
def test_reaper_ends_sandboxes_of_a_finished_campaign(db, manager, engines_clean):
    done = Campaign.objects.create(
        name="done", spec={}, backend="bwrap", owner=manager, state="cancelled"
    )
    live = Campaign.objects.create(
        name="live", spec={}, backend="bwrap", owner=manager, state="running"
    )
    ended = sandbox_create(spec=SPEC, backend="bwrap", owner_kind="campaign", owner_id=done.pk)
    kept = sandbox_create(spec=SPEC, backend="bwrap", owner_kind="campaign", owner_id=live.pk)
    assert [s.pk for s in sandboxes_reap()] == [ended.pk]
    assert Sandbox.objects.get(pk=kept.pk).state == SandboxState.RUNNING


@both_shapes
def test_a_resumed_run_ends_engine_sandboxes_a_dead_worker_never_recorded(db, engines_clean):
    """A worker killed between the engine's fork and its records' update leaves engine
    sandboxes that no live record names; the run's next worker ends them at once."""
    engine = backend_get("bwrap")
    unrecorded = engine.create(services._spec_labels(SPEC, convoy_run=777))
    other_run = engine.create(services._spec_labels(SPEC, convoy_run=778))
    recorded = sandbox_create(spec=SPEC, backend="bwrap", run_id=777)

    removed = services.sandboxes_orphans_terminate(
        backend="bwrap", labels={"convoy_run": "777"}, reason="worker lost; run resumed"
    )

    assert removed == [unrecorded.external_id]
    remaining = {handle.external_id for handle in engine.list({})}
    assert unrecorded.external_id not in remaining
    assert not engine.workspace_path(unrecorded).exists()
    assert {other_run.external_id, recorded.external_id} <= remaining
    [event] = AuditEvent.objects.filter(action="sandbox.orphan.reaped")
    assert json.loads(event.body)["payload"]["external_id"] == unrecorded.external_id
    assert json.loads(event.body)["reason"] == "worker lost; run resumed"
