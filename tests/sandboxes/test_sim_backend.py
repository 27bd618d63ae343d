"""The simulation backend: registered only when CONVOY_SANDBOX_SIM=1, and when it is, a run goes
through the real executor, database and audit trail with its canned results."""

import os
import subprocess
import sys

import pytest
from django.conf import settings

from audit.models import AuditEvent
from campaigns.models import RepoRun, RunState, VariantState
from campaigns.pipeline import run_execute
from campaigns.services import campaign_create, campaign_launch
from sandboxes import backends, services
from sandboxes.backends.sim import SIM_PATCH, SimBackend
from sandboxes.models import Sandbox, SandboxState
from tests.factories import repos_make

pytestmark = pytest.mark.shapes("embedded", "production")

SPEC = """\
name: sim-{n}
backend: sim
repos: {{tag: {tag}}}
max_parallel: 1
transform: {{run: "sed -i 's/assertEquals(/assertEqual(/g' test_calc.py"}}
variants:
  - {{name: a, env: {{}}}}
  - {{name: b, env: {{}}}}
validate:
  - run: python3 -m unittest -q
"""


def _registered(**env) -> str:
    code = (
        "import django; django.setup(); from sandboxes.backends import BACKENDS; "
        "from django.conf import settings; "
        "print('sim' in BACKENDS, 'sim' in settings.SANDBOX_BACKENDS)"
    )
    clean = {k: v for k, v in os.environ.items() if k != "CONVOY_SANDBOX_SIM"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        # This run's data dir: a child left to pick its own would leave var/test-<pid> behind.
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "CONVOY_DATA_DIR": str(settings.DATA_DIR),
            **env,
        },
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_the_simulation_is_registered_only_when_asked_for():
    assert _registered() == "False False"
    assert _registered(CONVOY_SANDBOX_SIM="1") == "True True"
    assert "sim" not in backends.BACKENDS  # this test process did not ask for it


@pytest.fixture
def sim_enabled(monkeypatch):
    """What CONVOY_SANDBOX_SIM=1 registers, in this process (its settings were read without)."""
    monkeypatch.setitem(backends.BACKENDS, "sim", "sandboxes.backends.sim.SimBackend")
    monkeypatch.setattr(settings, "SANDBOX_BACKENDS", (*settings.SANDBOX_BACKENDS, "sim"))
    monkeypatch.setitem(services._backends, "sim", SimBackend())


def test_a_simulated_run_goes_through_the_real_executor_and_audit(
    transactional_db, manager, sim_enabled
):
    tag, _ = repos_make(1)
    campaign = campaign_create(actor=manager, source=SPEC.format(n=1, tag=tag))
    campaign_launch(campaign=campaign, actor=manager)
    run = RepoRun.objects.get(campaign=campaign)

    assert run_execute(run_id=run.pk) == "succeeded"

    run.refresh_from_db()
    assert run.state == RunState.SUCCEEDED
    variants = list(run.variants.order_by("position"))
    assert [v.state for v in variants] == [VariantState.COMPLETED] * 2
    assert all(bytes(v.patch) == SIM_PATCH and v.files_changed == 1 for v in variants)
    sandboxes = Sandbox.objects.filter(run_id=run.pk)
    assert sandboxes.count() == 4  # prepared (snapshotted), the baseline, two variant forks
    assert {s.state for s in sandboxes} == {SandboxState.TERMINATED}
    actions = set(AuditEvent.objects.filter(run_id=run.pk).values_list("action", flat=True))
    assert {"sandbox.exec.started", "sandbox.exec.completed"} <= actions
