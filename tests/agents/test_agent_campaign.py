"""End to end: agent variants in real sandboxes reach the fake model provider only through the
egress proxy and the model gateway; calls are recorded, audited and budgeted; the real key is
nowhere a sandbox or a reviewer can see."""

import json
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connection
from django.urls import reverse

from agents.models import CallOutcome, ModelCall, ModelGrant
from agents.providers import provider_set
from agents.selectors import variant_transcript
from audit.models import AuditEvent
from campaigns.models import RepoRun, Variant, VariantState
from campaigns.services import campaign_create, campaign_launch
from sandboxes.models import Sandbox, SandboxCommand
from tests.agents.fake_model_server import FakeModelServer
from tests.factories import PASSWORD, repos_make, runs_final
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

REAL_KEY = "sk-real-e2e-key-" + os.urandom(12).hex()
AGENT = (Path(__file__).parent / "tiny_agent.py").read_text()


@pytest.fixture
def secrets_key(monkeypatch, settings):
    """The production shape requires CONVOY_SECRETS_KEY; the worker process inherits it."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("CONVOY_SECRETS_KEY", key)
    settings.SECRETS_KEY = key


def _spec(tag: str, backend: str, probe: str) -> str:
    agent = "".join(f"    {line}\n" for line in AGENT.splitlines())
    return f"""\
name: agents-{backend}
backend: {backend}
repos: {{tag: {tag}}}
limits: {{timeout_s: 300, cpu: 1, memory_mb: 512, network: none}}
model: {{provider: fake-openai, name: fake-model, budget_usd: 5, max_calls: 10}}
files:
  prompt.md: "Fix ${{repo}} (${{language}}) on ${{branch}}.${{baseline_output}}"
  agent.py: |
{agent}setup:
  - run: test -f calc.py
transform:
  run: python3 $CONVOY_FILES/agent.py
variants:
  - {{name: streaming, env: {{AGENT_STREAM: "1", CONVOY_PROBE_URL: "{probe}"}}}}
  - {{name: plain, env: {{AGENT_STREAM: "0"}}}}
  - {{name: one-call, model: {{max_calls: 1}}}}
validate:
  - run: PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q
"""


def _files_with(needle: bytes, root: Path) -> list[str]:
    # Not the embedded shape's live SQLite files: opening and closing them in this process would
    # drop SQLite's POSIX locks (another process then resets the shared memory under us: SIGBUS).
    # Their content is searched through the ORM above.
    name = str(connection.settings_dict["NAME"]) if connection.vendor == "sqlite" else ""
    live = {name, f"{name}-wal", f"{name}-shm", f"{name}-journal"} if name else set()
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if str(path) in live or path.is_symlink() or not path.is_file():
                continue
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def _agent_campaign(admin, manager, backend: str):
    fake = FakeModelServer().__enter__()
    provider_set(
        name="fake-openai",
        api_style="openai",
        base_url=fake.base_url,
        key=REAL_KEY,
        allowed_models=["fake-model"],
        input_usd_per_mtok="3",
        output_usd_per_mtok="15",
        actor=admin,
    )
    tag, _paths = repos_make(3)
    campaign = campaign_create(actor=manager, source=_spec(tag, backend, f"{fake.base_url}/models"))
    return fake, campaign_launch(campaign=campaign, actor=manager)


def _assert_agent_campaign(fake, campaign, backend: str) -> None:
    backends = set(
        Sandbox.objects.filter(campaign_id=campaign.pk).values_list("backend", flat=True)
    )
    assert backends == {backend}
    runs = list(RepoRun.objects.filter(campaign=campaign).select_related("repository"))
    assert len(runs) == 3
    variants = list(Variant.objects.filter(run__campaign=campaign))
    assert len(variants) == 9
    for v in variants:
        if v.name == "one-call":
            # Its agent's second call was refused: the variant ended as budget exhausted.
            assert v.state == VariantState.FAILED, (v.name, v.error, v.output_tail)
            assert v.error.startswith("budget exhausted: max_calls 1 made"), v.error
            assert "budget exhausted for this variant" in v.output_tail
            continue
        assert v.state == VariantState.COMPLETED, (v.name, v.error, v.output_tail)
        assert v.validation == "passed", v.output_tail
        assert "+        self.assertEqual(mean([1, 2]), 1.5)" in v.diff
        # What the sandbox saw: the gateway's URL and a token, never the key.
        assert "OPENAI_BASE_URL=http://gateway.convoy.internal/v1" in v.diff
        assert "OPENAI_API_KEY=convoy-gw-" in v.diff
        assert "MSWEA_MODEL_NAME=openai/fake-model" in v.diff  # what mini-swe-agent reads
        if v.name == "streaming":  # the provider's own address is out of the sandbox's reach
            assert "+probe direct: blocked" in v.diff and "+probe proxy: blocked" in v.diff
    calls = ModelCall.objects.filter(campaign_id=campaign.pk)
    # A call's record lands just after its answer ends: wait for the last ones.
    wait_for(lambda: calls.count() == 3 * (2 + 2 + 2), timeout=10, what="every call recorded")
    assert calls.filter(outcome=CallOutcome.OK).count() == 3 * (2 + 2 + 1)
    assert calls.filter(outcome=CallOutcome.REFUSED).count() == 3
    assert calls.filter(stream=True, outcome=CallOutcome.OK, tokens_in=120, tokens_out=30).count()
    assert not calls.filter(outcome=CallOutcome.OK, tokens_in=0).exists()
    events = AuditEvent.objects.filter(action="agents.model.called")
    in_campaign = [e for e in events if json.loads(e.body)["context"]["campaign_id"] == campaign.pk]
    assert len(in_campaign) == calls.count()  # one audit event per model call
    # On the sandbox's timeline, beside its commands.
    sandboxes = {v.pk: v.sandbox_id for v in variants}
    for event in in_campaign:
        context = json.loads(event.body)["context"]
        assert context["sandbox_id"] == sandboxes[context["variant_id"]]
    # $PROMPT was rendered per repository from files: prompt.md.
    names = {r.repository.name for r in runs}
    prompts = {r["body"]["messages"][0]["content"] for r in fake.requests}
    assert prompts == {f"Fix {name} (Python) on main." for name in names}
    # Every grant was revoked when its sandbox ended.
    assert not ModelGrant.objects.filter(campaign_id=campaign.pk, revoked_at=None).exists()
    # The provider saw the real key on every call, and never a sandbox token.
    assert len(fake.requests) == 15
    for request in fake.requests:
        assert request["headers"]["Authorization"] == f"Bearer {REAL_KEY}"
        assert "convoy-gw-" not in json.dumps(request)
    # The real key is nowhere a sandbox or a reviewer can see.
    seen = []
    for v in variants:
        seen += [v.diff, v.output_tail, v.error, json.dumps(variant_transcript(variant_id=v.pk))]
    for command in SandboxCommand.objects.filter(sandbox__campaign_id=campaign.pk):
        seen.append(json.dumps([command.argv, command.cwd, command.env_names]))
    seen += [e.body for e in AuditEvent.objects.all()]
    assert not [s for s in seen if REAL_KEY in s]
    assert _files_with(REAL_KEY.encode(), Path(settings.DATA_DIR)) == []


def _assert_pages(client, reviewer, campaign) -> None:
    """A reviewer sees tokens and cost per variant beside its diff, and each transcript."""
    assert client.login(username=reviewer.username, password=PASSWORD)
    run = RepoRun.objects.filter(campaign=campaign).first()
    page = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    assert page.count('data-testid="model-cost"') == 3
    for variant in run.variants.all():
        transcript = client.get(reverse("agents-transcript", args=[variant.pk])).content.decode()
        calls = ModelCall.objects.filter(variant_id=variant.pk).count()
        assert transcript.count('data-testid="transcript-call"') == calls
        assert REAL_KEY not in transcript


@pytest.mark.shapes("embedded", "production")
def test_agent_campaign_on_bwrap(secrets_key, celery_worker, admin_user, manager, reviewer, client):
    fake, campaign = _agent_campaign(admin_user, manager, "bwrap")
    try:
        runs_final(campaign, timeout=240)
        _assert_agent_campaign(fake, campaign, "bwrap")
        _assert_pages(client, reviewer, campaign)
    finally:
        fake.__exit__()


def test_agent_campaign_on_gvisor(secrets_key, celery_worker, admin_user, manager):
    fake, campaign = _agent_campaign(admin_user, manager, "gvisor")
    try:
        runs_final(campaign, timeout=420)
        _assert_agent_campaign(fake, campaign, "gvisor")
    finally:
        fake.__exit__()
