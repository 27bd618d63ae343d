"""A real open-source agent, mini-swe-agent (PyPI), driven end to end against the scripted fake
provider through the gateway: in a bwrap sandbox with a campaign image that installs it.

The image is built from the host's package index (pip's configuration on the host); where that
index cannot be reached the test skips with the reason.
"""

import json
import subprocess

import pytest
from cryptography.fernet import Fernet

from agents.models import CallOutcome, ModelCall
from agents.providers import provider_set
from campaigns.models import Variant, VariantState
from campaigns.services import campaign_create, campaign_launch
from tests.agents.fake_model_server import FakeModelServer, mini_script
from tests.factories import repos_make, runs_final
from tests.support import PYTHON, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MINI = "mini-swe-agent==2.4.6"
REAL_KEY = "sk-real-reference-agent-key-0123456789"


@pytest.fixture
def secrets_key(monkeypatch, settings):
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("CONVOY_SECRETS_KEY", key)
    settings.SECRETS_KEY = key


def _index_reachable(where) -> str:
    probe = subprocess.run(
        [PYTHON, "-m", "pip", "download", "--no-deps", "-q", "-d", str(where), MINI],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return "" if probe.returncode == 0 else probe.stderr[-300:]


@pytest.mark.shapes("embedded", "production")
def test_mini_swe_agent_in_a_sandbox(
    secrets_key, package_index_env, celery_worker, admin_user, manager, tmp_path
):
    why = _index_reachable(tmp_path)
    if why:
        pytest.skip(f"the package index is not reachable from this host: {why}")
    tag, _paths = repos_make(1)
    with FakeModelServer(script=mini_script) as fake:
        provider_set(
            name="fake-openai",
            api_style="openai",
            base_url=fake.base_url,
            key=REAL_KEY,
            allowed_models=["fake-model"],
            input_usd_per_mtok="3",
            output_usd_per_mtok="15",
            actor=admin_user,
        )
        spec = f"""\
name: mini-{tag}
backend: bwrap
repos: {{tag: {tag}}}
image: {{pip: ["{MINI}"]}}
limits: {{timeout_s: 900}}
model: {{provider: fake-openai, name: fake-model, max_calls: 10}}
files:
  prompt.md: "In ${{repo}}, replace the deprecated assertEquals with assertEqual."
transform:
  run: mini -t "$PROMPT" --yolo --exit-immediately
validate:
  - run: PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q
"""
        campaign = campaign_launch(
            campaign=campaign_create(actor=manager, source=spec), actor=manager
        )
        runs_final(campaign, timeout=1200)
    variant = Variant.objects.get(run__campaign=campaign)
    assert variant.state == VariantState.COMPLETED, (variant.error, variant.output_tail)
    assert "+        self.assertEqual(mean([1, 2]), 1.5)" in variant.diff
    calls = ModelCall.objects.filter(variant_id=variant.pk)
    wait_for(lambda: calls.count() == 2, timeout=10, what="both calls recorded")
    assert [c.outcome for c in calls] == [CallOutcome.OK, CallOutcome.OK]
    assert all((c.tokens_in, c.tokens_out) == (120, 30) for c in calls)
    # mini sent the task and then the sed's result back; the provider saw the real key only.
    assert "assertEquals" in json.dumps(fake.requests[0]["body"]["messages"])
    assert fake.requests[1]["body"]["messages"][-1]["role"] == "tool"
    assert all(r["headers"]["Authorization"] == f"Bearer {REAL_KEY}" for r in fake.requests)
    assert REAL_KEY not in variant.diff + variant.output_tail
