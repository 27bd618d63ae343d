"""The sandbox services driving the Modal backend, with FakeModal in place of Modal's cloud
(named `modal_fake`): records, audit events and reaping are the same as on the local engines.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from sandboxes import reaper, services
from sandboxes.backends.base import NetworkPolicy, SandboxSpec
from sandboxes.backends.modal import ModalBackend
from sandboxes.models import Sandbox, SandboxState
from tests.sandboxes.fake_modal import modal_fake_backend

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def modal_engine(tmp_path, monkeypatch):
    """backend_get("modal") answers with a ModalBackend wired to FakeModal."""
    with modal_fake_backend(tmp_path / "modal") as engine:
        monkeypatch.setitem(services._backends, "modal", engine)
        yield engine


def test_modal_fake_registered_by_name():
    assert services.BACKENDS["modal"] == "sandboxes.backends.modal.ModalBackend"
    engine = ModalBackend()  # what backend_get builds: no Modal call until it is used
    assert engine.name == "modal"


def test_modal_fake_services_create_exec_fork_terminate(db, modal_engine, manager):
    spec = SandboxSpec(image="python:3.12-slim", network=NetworkPolicy.NONE)
    sandbox = services.sandbox_create(spec=spec, backend="modal", on_behalf_of=manager, run_id=9)
    assert sandbox.state == SandboxState.RUNNING
    assert sandbox.external_id.startswith("sb-")
    [call] = modal_engine.fake.create_calls
    assert call["block_network"] is True
    assert call["tags"]["convoy_run"] == "9"
    assert call["tags"]["convoy_sandbox"] == str(sandbox.pk)

    command = services.sandbox_exec(sandbox=sandbox, argv=["sh", "-c", "echo hi; exit 4"])
    assert (command.exit_code, command.timed_out, command.bytes_out) == (4, False, 3)

    services.sandbox_write_file(sandbox=sandbox, path="seed.txt", data=b"seed")
    snapshot = services.sandbox_snapshot(sandbox=sandbox)
    forks = services.sandbox_fork(snapshot=snapshot, count=2, spec=spec)
    assert [f.state for f in forks] == [SandboxState.RUNNING] * 2
    assert {services.sandbox_read_file(sandbox=f, path="seed.txt") for f in forks} == {b"seed"}

    services.sandbox_terminate(sandbox=sandbox, reason="done", actor=manager)
    services.sandbox_terminate(sandbox=sandbox, reason="done again", actor=manager)
    assert sandbox.state == SandboxState.TERMINATED
    assert sandbox.external_id not in {sb.object_id for sb in modal_engine.fake.running()}
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    for action in (
        "sandbox.sandbox.created",
        "sandbox.exec.started",
        "sandbox.exec.completed",
        "sandbox.snapshot.created",
        "sandbox.sandbox.terminated",
    ):
        assert action in actions
    assert actions.count("sandbox.sandbox.terminated") == 1


def test_modal_fake_reaper_terminates_expired_and_orphaned_sandboxes(db, modal_engine, settings):
    settings.SANDBOX_BACKEND = "modal"
    expired = services.sandbox_create(spec=SandboxSpec(timeout_s=60), backend="modal")
    kept = services.sandbox_create(spec=SandboxSpec(timeout_s=600), backend="modal")
    Sandbox.objects.filter(pk=expired.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    # A sandbox of this installation that no record names (a worker died before recording it).
    orphan = modal_engine.create(SandboxSpec(labels={"convoy_install": services.install_tag()}))
    # Another installation's sandbox on the same Modal account is none of our business.
    other = modal_engine.create(SandboxSpec(labels={"convoy_install": "someone-else"}))

    assert reaper.sandboxes_reap() == [expired]  # the orphan is spared while it may be new
    assert orphan.external_id in {sb.object_id for sb in modal_engine.fake.running()}
    # Once past the grace (a create in flight records its sandbox well within it):
    reaped = reaper.sandboxes_reap(now=timezone.now() + timedelta(seconds=reaper.ORPHAN_GRACE_S))

    assert reaped == []
    expired.refresh_from_db()
    assert expired.terminated_reason == "reaped: deadline passed"
    running = {sb.object_id for sb in modal_engine.fake.running()}
    assert running == {kept.external_id, other.external_id}
    assert orphan.external_id not in running
    assert AuditEvent.objects.filter(action="sandbox.orphan.reaped").count() == 1
