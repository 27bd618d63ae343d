"""Transient platform errors retry with backoff; repository errors do not.

The platform error is Modal's: `modal_fake` (FakeModal, a fake of the modal SDK, since Modal's
cloud cannot be reached from here) refuses a sandbox create the way Modal does under load
(`ServiceError`). Everything else is real: the database, the broker the requeue goes to, the
campaign services, and the sandboxes FakeModal runs under bubblewrap.
"""

from datetime import timedelta

import modal
import pytest
from django.utils import timezone

from campaigns.models import RepoRun, RunState, RunTransition, VariantState
from campaigns.pipeline import run_execute
from campaigns.services import campaign_create, campaign_launch
from sandboxes import services
from sandboxes.models import Sandbox, SandboxState
from tests.factories import repos_make
from tests.sandboxes.fake_modal import modal_fake_backend

pytestmark = pytest.mark.shapes("embedded", "production")

SPEC = """\
name: {name}
backend: modal
repos: {{tag: {tag}}}
max_parallel: 1
transform: {{run: "sed -i 's/assertEquals(/assertEqual(/g' test_calc.py"}}
"""


@pytest.fixture
def modal_engine(tmp_path, monkeypatch):
    """backend_get("modal") answers with a ModalBackend wired to FakeModal."""
    with modal_fake_backend(tmp_path / "modal") as engine:
        monkeypatch.setitem(services._backends, "modal", engine)
        yield engine


def _launched_run(manager, name: str, **spec_fields) -> RepoRun:
    tag, _ = repos_make(1)
    source = SPEC.format(name=name, tag=tag)
    for key, value in spec_fields.items():
        source += f"{key}: {value}\n"
    campaign = campaign_create(actor=manager, source=source)
    campaign_launch(campaign=campaign, actor=manager)
    run = RepoRun.objects.get(campaign=campaign)
    assert run.state == RunState.QUEUED  # the dispatcher gave it the campaign's one slot
    return run


def test_modal_fake_refused_create_requeues_the_run_with_backoff_then_it_succeeds(
    transactional_db, modal_engine, manager
):
    run = _launched_run(manager, "transient-create")
    modal_engine.fake.fail_next("create", modal.exception.ServiceError("unavailable"))

    before = timezone.now()
    assert run_execute(run_id=run.pk) == "requeued"
    run.refresh_from_db()
    assert run.state == RunState.QUEUED
    assert run.transient_retries == 1
    assert run.error == ""  # not a failure: nobody has to retry it by hand
    # Backoff: its next attempt is not due before two seconds from now.
    assert run.queued_at >= before + timedelta(seconds=2)
    refused = Sandbox.objects.get(run_id=run.pk)
    assert refused.state == SandboxState.FAILED
    assert "unavailable" in refused.terminated_reason

    # The requeued task's second attempt (called here, as the worker would after the countdown).
    assert run_execute(run_id=run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.state == RunState.SUCCEEDED
    [variant] = run.variants.all()
    assert variant.state == VariantState.COMPLETED
    assert (variant.files_changed, variant.insertions, variant.deletions) == (1, 2, 2)
    assert b"+        self.assertEqual(" in bytes(variant.patch)
    moves = list(
        RunTransition.objects.filter(run=run).order_by("id").values_list("from_state", "to_state")
    )
    assert moves == [
        ("pending", "queued"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert not modal_engine.fake.running()  # nothing left behind on the engine


def test_modal_fake_repeated_refusals_fail_the_run_after_the_last_retry(
    transactional_db, modal_engine, manager
):
    from campaigns.pipeline import MAX_TRANSIENT_RETRIES

    run = _launched_run(manager, "transient-forever")
    refusals = MAX_TRANSIENT_RETRIES + 1
    modal_engine.fake.fail_next(
        "create", modal.exception.ServiceError("unavailable"), times=refusals
    )
    outcomes = [run_execute(run_id=run.pk) for _ in range(refusals)]
    assert outcomes == ["requeued"] * MAX_TRANSIENT_RETRIES + ["failed"]
    run.refresh_from_db()
    assert run.state == RunState.FAILED
    assert run.transient_retries == MAX_TRANSIENT_RETRIES
    assert "Modal create failed: unavailable" in run.error


def test_repository_error_fails_the_run_at_once_without_retry(
    transactional_db, modal_engine, manager
):
    # The ref does not exist in the repository: no retry can fix that.
    run = _launched_run(manager, "repo-error")
    RepoRun.objects.filter(pk=run.pk).update(ref="no-such-branch")
    assert run_execute(run_id=run.pk) == "failed"
    run.refresh_from_db()
    assert run.state == RunState.FAILED
    assert run.transient_retries == 0
    assert "no commit 'no-such-branch'" in run.error
    assert not modal_engine.fake.running()
