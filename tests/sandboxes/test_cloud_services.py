"""Convoy's sandbox services on each cloud backend (Modal, E2B, Daytona), with the fake SDK in
place of the provider's cloud (FakeModal, FakeE2B, FakeDaytona: none can be reached from here).

Create, exec, snapshot, fork and teardown go through the services, so records, audit events and
the reaper are the same as on the local engines; the fake records what the provider was asked.
A worker that crashes between create and teardown leaves nothing running once the reaper has
passed, and the reaper spares a sandbox whose record is still being written.
"""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from sandboxes import reaper, services
from sandboxes.backends.base import NetworkPolicy, SandboxSpec
from sandboxes.models import Sandbox, SandboxState
from tests.sandboxes.fake_cloud import CLOUD_FAKES, cloud_fake_installed, fake_running, sdk_story

pytestmark = pytest.mark.shapes("embedded", "production")

PAST_GRACE = timedelta(seconds=reaper.ORPHAN_GRACE_S + 5)


@pytest.fixture(params=list(CLOUD_FAKES))
def cloud(request, tmp_path, monkeypatch, settings):
    """Each cloud backend in turn, reachable by name through backend_get, and the default."""
    settings.SANDBOX_BACKEND = request.param
    with cloud_fake_installed(request.param, tmp_path / request.param, monkeypatch) as engine:
        yield engine


def _orphan_make(engine, **labels) -> str:
    """What a worker killed right after the provider's create leaves: a sandbox carrying
    Convoy's labels that no record names."""
    spec = SandboxSpec(labels={"convoy_install": services.install_tag(), **labels})
    return engine.create(spec).external_id


def test_cloud_fake_services_create_exec_snapshot_fork_teardown(db, cloud, manager):
    spec = SandboxSpec(image="python:3.12-slim", network=NetworkPolicy.NONE)
    sandbox = services.sandbox_create(spec=spec, backend=cloud.name, on_behalf_of=manager, run_id=9)
    assert (sandbox.backend, sandbox.state) == (cloud.name, SandboxState.RUNNING)

    command = services.sandbox_exec(sandbox=sandbox, argv=["sh", "-c", "echo hi; exit 4"])
    assert (command.exit_code, command.timed_out, command.bytes_out) == (4, False, 3)
    services.sandbox_write_file(sandbox=sandbox, path="seed.txt", data=b"seed")
    snapshot = services.sandbox_snapshot(sandbox=sandbox)
    forks = services.sandbox_fork(snapshot=snapshot, count=2, spec=spec, run_id=9)
    assert [f.state for f in forks] == [SandboxState.RUNNING] * 2
    assert {services.sandbox_read_file(sandbox=f, path="seed.txt") for f in forks} == {b"seed"}
    for each in (sandbox, *forks):
        services.sandbox_terminate(sandbox=each, reason="done", actor=manager)

    story = sdk_story(cloud)
    assert story["create"] == [sandbox.external_id]
    assert sorted(story["fork"]) == sorted(f.external_id for f in forks)
    assert story["snapshot"] == [sandbox.external_id]
    assert story["exec"], "the provider ran no command"
    assert sorted(story["teardown"]) == sorted(
        [sandbox.external_id, *(f.external_id for f in forks)]
    )
    assert not fake_running(cloud)
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    for action in ("sandbox.sandbox.created", "sandbox.exec.completed", "sandbox.snapshot.created"):
        assert action in actions
    assert actions.count("sandbox.sandbox.terminated") == 3


def test_cloud_fake_crash_between_create_and_teardown_leaves_no_orphan_after_the_reaper(db, cloud):
    # A worker dies after the provider created the sandbox, before it was recorded ...
    unrecorded = _orphan_make(cloud, convoy_run="41")
    # ... and another dies after recording it, before teardown (its run is gone meanwhile).
    recorded = services.sandbox_create(spec=SandboxSpec(timeout_s=600), backend=cloud.name)
    Sandbox.objects.filter(pk=recorded.pk).update(deadline_at=timezone.now())
    # Another installation's sandbox on the same account is none of our business.
    other = cloud.create(SandboxSpec(labels={"convoy_install": "someone-else"})).external_id
    assert {unrecorded, recorded.external_id, other} <= fake_running(cloud)

    reaper.sandboxes_reap(now=timezone.now() + PAST_GRACE)

    assert fake_running(cloud) == {other}
    assert {unrecorded, recorded.external_id} <= set(sdk_story(cloud)["teardown"])
    recorded.refresh_from_db()
    assert recorded.state == SandboxState.TERMINATED
    [orphan] = AuditEvent.objects.filter(action="sandbox.orphan.reaped")
    payload = json.loads(orphan.body)["payload"]
    assert (payload["backend"], payload["external_id"]) == (cloud.name, unrecorded)


def test_cloud_fake_reaper_spares_a_sandbox_created_moments_ago(db, cloud):
    """The race: the provider's create has returned but the worker has not yet written the
    record. Without the grace the reaper killed the sandbox the worker was about to use."""
    fresh = _orphan_make(cloud, convoy_run="42")

    reaper.sandboxes_reap()

    assert fresh in fake_running(cloud)
    assert fresh not in sdk_story(cloud)["teardown"]
    assert not AuditEvent.objects.filter(action="sandbox.orphan.reaped").exists()


def test_cloud_fake_reaper_spares_a_sandbox_whose_record_is_still_creating(db, cloud):
    """A slow create (an image built first) outlasts the grace: the record, written before the
    provider was asked and still `creating`, names the sandbox by its convoy_sandbox label."""
    sandbox = services.sandbox_create(spec=SandboxSpec(timeout_s=3 * 3600), backend=cloud.name)
    external_id = sandbox.external_id
    # The state a worker is in between the provider's answer and its record's update.
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.CREATING, external_id="")

    reaper.sandboxes_reap(now=timezone.now() + PAST_GRACE)
    assert external_id in fake_running(cloud)

    # A create stuck for an hour is given up: its record fails, then its sandbox is reaped.
    reaper.sandboxes_reap(now=timezone.now() + reaper.STUCK + PAST_GRACE)
    assert external_id not in fake_running(cloud)


CREDENTIALS = ("E2B_API_KEY", "DAYTONA_API_KEY", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")


@pytest.mark.parametrize("name", list(CLOUD_FAKES))
def test_cloud_fake_provider_credentials_authenticate_but_never_enter_the_sandbox(
    db, name, tmp_path, monkeypatch, settings
):
    """The operator's credentials (environment here) reach the provider's SDK as its
    authentication and nowhere else: not in the sandbox's environment, not in a command's."""
    values = {var: f"{var.lower()}-s3cret-{name}" for var in CREDENTIALS}
    for var, value in values.items():
        monkeypatch.setenv(var, value)
    settings.SANDBOX_BACKEND = name
    kwargs = {} if name == "modal" else {"api_key": None}  # None: read the setting/variable
    with CLOUD_FAKES[name](tmp_path / name, **kwargs) as engine:
        monkeypatch.setitem(services._backends, name, engine)
        sandbox = services.sandbox_create(spec=SandboxSpec(env={"CI": "1"}), backend=name)
        seen: list[bytes] = []
        services.sandbox_exec(
            sandbox=sandbox,
            argv=["env"],
            env={"STEP": "1"},
            on_output=lambda e: seen.append(e.data),
        )
        services.sandbox_terminate(sandbox=sandbox, reason="done")

        output = b"".join(seen).decode()
        assert "CI=1" in output and "STEP=1" in output  # the sandbox's own variables arrive
        calls = json.dumps(getattr(engine.fake, "calls", []), default=repr)
        for value in values.values():
            assert value not in output
        for var, value in values.items():
            if name == "e2b" and var == "E2B_API_KEY":
                assert {c["api_key"] for c in engine.fake.called("Sandbox.create")} == {value}
                calls = calls.replace(f'"api_key": "{value}"', "")
            elif name == "daytona" and var == "DAYTONA_API_KEY":
                assert engine.fake.clients[0].config.api_key == value
            assert value not in calls
