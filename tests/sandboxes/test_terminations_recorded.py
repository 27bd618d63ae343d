"""The system's terminations (the reaper's, a run's teardown) are on record before the engine is
asked: the state change and its event are committed first. The engine stopped the sandbox
first, and a worker that died, or a trail that refused the event, left an engine action with
no record of it."""

import json
from datetime import timedelta

import modal.exception
import pytest
from django.utils import timezone

from audit.models import AuditEvent
from campaigns.teardown import sandbox_terminate_logged
from sandboxes import reaper
from sandboxes.backends.base import SandboxSpec
from sandboxes.models import Sandbox, SandboxState
from sandboxes.services import (
    backend_get,
    install_tag,
    sandbox_create,
    sandbox_exec,
    sandbox_read_file,
)
from tests.sandboxes.fake_cloud import cloud_fake_installed, fake_running
from tests.support import events_refused

pytestmark = pytest.mark.shapes("embedded", "production")
SPEC = SandboxSpec(timeout_s=300)
PAST_GRACE = timedelta(seconds=reaper.ORPHAN_GRACE_S + 5)


@pytest.fixture
def sandbox(transactional_db, manager, engines_clean):
    """A live bwrap sandbox (committed data: the reaper and the teardown thread are not inside a
    test's transaction)."""
    return sandbox_create(spec=SPEC, backend="bwrap", on_behalf_of=manager)


def _runs_on(sandbox: Sandbox) -> None:
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.RUNNING
    sandbox_exec(sandbox=sandbox, argv=["sh", "-c", "echo still here > alive.txt"])
    assert sandbox_read_file(sandbox=sandbox, path="alive.txt") == b"still here\n"


def test_a_reaping_the_trail_cannot_record_stops_nothing(sandbox):
    Sandbox.objects.filter(pk=sandbox.pk).update(deadline_at=timezone.now())
    with events_refused("sandbox."):
        assert reaper.sandboxes_reap() == []
    _runs_on(sandbox)
    assert not AuditEvent.objects.filter(action__startswith="sandbox.termin").exists()

    # Once the trail takes it, the next pass reaps it, recorded.
    assert [s.pk for s in reaper.sandboxes_reap()] == [sandbox.pk]
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.TERMINATED
    event = AuditEvent.objects.get(action="sandbox.sandbox.terminated", sandbox_id=sandbox.pk)
    assert event.actor_type == "system"
    assert json.loads(event.body)["reason"] == "reaped: deadline passed"


def test_a_teardown_the_trail_cannot_record_stops_nothing(sandbox):
    with events_refused("sandbox."):
        sandbox_terminate_logged(sandbox, "variant finished")  # logged, not raised
    _runs_on(sandbox)
    assert not AuditEvent.objects.filter(action__startswith="sandbox.termin").exists()


def test_an_engine_that_fails_a_recorded_termination_is_swept_and_both_are_recorded(
    db, tmp_path, monkeypatch, settings
):
    """Recorded first, the termination stays recorded when the engine then fails; the trail
    says so, and the reaper's orphan sweep ends what no live record names."""
    settings.SANDBOX_BACKEND = "modal"
    with cloud_fake_installed("modal", tmp_path / "modal", monkeypatch) as engine:
        sandbox = sandbox_create(spec=SandboxSpec(timeout_s=600), backend="modal")
        Sandbox.objects.filter(pk=sandbox.pk).update(deadline_at=timezone.now())
        engine.fake.fail_next("terminate", modal.exception.Error("the provider is down"))

        assert reaper.sandboxes_reap() == []  # the failure is logged; the sweep spares it yet

        sandbox.refresh_from_db()
        assert sandbox.state == SandboxState.TERMINATED
        assert sandbox.external_id in fake_running(engine)
        actions = list(
            AuditEvent.objects.filter(sandbox_id=sandbox.pk)
            .order_by("id")
            .values_list("action", flat=True)
        )
        assert actions[-2:] == ["sandbox.sandbox.terminated", "sandbox.termination.failed"]
        failed = AuditEvent.objects.get(action="sandbox.termination.failed")
        assert "the provider is down" in json.loads(failed.body)["reason"]

        reaper.sandboxes_reap(now=timezone.now() + PAST_GRACE)

        assert sandbox.external_id not in fake_running(engine)
        (orphan,) = AuditEvent.objects.filter(action="sandbox.orphan.reaped")
        assert json.loads(orphan.body)["payload"]["external_id"] == sandbox.external_id


def test_an_orphan_the_trail_cannot_record_is_left_for_the_next_pass(
    transactional_db, tmp_path, monkeypatch, settings
):
    """Engine sandboxes no live record names were removed first and recorded after: a failed
    write left a removal with no record. A cloud engine's (found by label) and a local one's
    (the engine's own sweep) are each recorded first."""
    settings.SANDBOX_BACKEND = "modal"
    monkeypatch.setattr(reaper, "ORPHAN_GRACE_S", 0.0)  # the local sweep's age limit
    local = backend_get("bwrap")
    labels = {"convoy_install": install_tag()}
    try:
        with cloud_fake_installed("modal", tmp_path / "modal", monkeypatch) as engine:
            cloud_orphan = engine.create(SandboxSpec(labels=labels)).external_id
            local_orphan = local.create(SandboxSpec(labels=labels))
            with events_refused("sandbox.orphan"):
                reaper.sandboxes_reap(now=timezone.now() + PAST_GRACE)
            assert cloud_orphan in fake_running(engine)
            assert local.workspace_path(local_orphan).exists()
            assert not AuditEvent.objects.filter(action="sandbox.orphan.reaped").exists()

            reaper.sandboxes_reap(now=timezone.now() + PAST_GRACE)

            assert cloud_orphan not in fake_running(engine)
            assert not local.workspace_path(local_orphan).exists()
            recorded = AuditEvent.objects.filter(action="sandbox.orphan.reaped")
            named = {json.loads(e.body)["payload"]["external_id"] for e in recorded}
            assert {cloud_orphan, local_orphan.external_id} <= named
    finally:
        local.terminate(local_orphan)
