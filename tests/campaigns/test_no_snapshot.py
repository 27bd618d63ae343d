"""Engines without filesystem snapshots: each variant gets a fresh sandbox and setup runs again.

The engine here is real bubblewrap, registered under another name with the snapshot and fork
capabilities left out, as an engine without them (E2B, Daytona, ...) would declare itself. The
pipeline only ever asks for capabilities, so this is the path such an engine takes.
"""

import pytest

from campaigns.models import RepoRun, RunState, Variant, VariantState
from campaigns.services import campaign_create, campaign_launch
from sandboxes import backends, services
from sandboxes.backends.base import Capability
from sandboxes.backends.bubblewrap import BubblewrapBackend
from sandboxes.models import Sandbox, SandboxCommand, SandboxSnapshot, SandboxState
from tests.factories import campaign_completed, repos_make, spec_for

pytestmark = pytest.mark.django_db(transaction=True)

NAME = "bwrap-nosnap"
SETUP = "echo set-up > .setup-ran"


class BubblewrapWithoutSnapshots(BubblewrapBackend):
    name = NAME
    capabilities = Capability.STREAMED_EXEC | Capability.READONLY_FILES


@pytest.fixture
def engine_without_snapshots(monkeypatch, settings):
    monkeypatch.setitem(
        backends.BACKENDS, NAME, f"{__name__}.{BubblewrapWithoutSnapshots.__name__}"
    )
    settings.SANDBOX_BACKENDS = (*settings.SANDBOX_BACKENDS, NAME)
    yield
    engine = services._backends.pop(NAME, None)
    if engine is not None:
        for handle in engine.list({}):
            engine.terminate(handle)


@pytest.mark.shapes("embedded")  # the worker runs in this process, where the engine is known
def test_an_engine_without_snapshots_reruns_setup_in_a_fresh_sandbox_per_variant(
    engine_without_snapshots, celery_worker, manager
):
    tag, _ = repos_make(2)
    spec = spec_for(tag, name="no-snapshots", backend=NAME)
    spec = spec.replace(
        "  - run: test -f calc.py\n", f"  - run: test -f calc.py\n  - run: {SETUP}\n"
    )
    campaign = campaign_launch(campaign=campaign_create(actor=manager, source=spec), actor=manager)
    campaign_completed(campaign, timeout=120)
    runs = RepoRun.objects.filter(campaign=campaign)
    assert {r.state for r in runs} == {RunState.SUCCEEDED}, [(r.state, r.error) for r in runs]
    assert not SandboxSnapshot.objects.filter(owner_kind="run", owner_id__in=runs).exists()
    for run in runs:
        variants = list(run.variants.all())
        assert len(variants) == 3
        assert {v.state for v in variants} == {VariantState.COMPLETED}
        # One sandbox per variant, each with its own checkout and setup, then the transform.
        assert len({v.sandbox_id for v in variants}) == 3
        for v in variants:
            assert "+        self.assertEqual(" in v.diff
            assert ".setup-ran" in v.diff  # setup's own file: this variant's sandbox ran it
            scripts = [
                c.argv[-1]
                for c in SandboxCommand.objects.filter(sandbox_id=v.sandbox_id).order_by("id")
            ]
            assert scripts[:3] == [
                "test -f calc.py",
                SETUP,
                "python3 $CONVOY_FILES/fix.py --style $STYLE",
            ]
    sandboxes = Sandbox.objects.filter(campaign_id=campaign.pk)
    # One per variant, and per run one more, prepared the same way, for the baseline.
    assert sandboxes.count() == 2 * 3 + 2 and {s.backend for s in sandboxes} == {NAME}
    assert sandboxes.filter(owner_kind="run").count() == 2
    assert {r.baseline for r in runs} == {"passed"}
    assert not sandboxes.exclude(state=SandboxState.TERMINATED).exists()
    assert services.backend_get(NAME).list({"convoy_campaign": str(campaign.pk)}) == []
    assert Variant.objects.filter(run__campaign=campaign).count() == 6
