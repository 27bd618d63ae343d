"""Agent runs that the model side stops: an unreachable provider, a spent campaign budget."""

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from agents.models import ModelCall
from agents.providers import provider_set
from campaigns.models import RepoRun, RunState, Variant, VariantState
from campaigns.services import campaign_create, campaign_launch
from sandboxes.models import Sandbox
from tests.agents.fake_model_server import FakeModelServer
from tests.factories import repos_make, runs_final
from tests.support import free_port

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]

AGENT = (Path(__file__).parent / "tiny_agent.py").read_text()


@pytest.fixture
def secrets_key(monkeypatch, settings):
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("CONVOY_SECRETS_KEY", key)
    settings.SECRETS_KEY = key


def _launch(manager, *, repos: int, model: str, max_parallel: int = 4):
    tag, _paths = repos_make(repos)
    agent = "".join(f"    {line}\n" for line in AGENT.splitlines())
    spec = f"""\
name: agent-{tag}
backend: bwrap
repos: {{tag: {tag}}}
max_parallel: {max_parallel}
model: {model}
files:
  agent.py: |
{agent}transform:
  run: python3 $CONVOY_FILES/agent.py
"""
    campaign = campaign_create(actor=manager, source=spec)
    return campaign_launch(campaign=campaign, actor=manager)


def test_an_unreachable_provider_fails_the_variant_naming_it(
    secrets_key, celery_worker, admin_user, manager
):
    provider_set(
        name="down-provider",
        api_style="openai",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        key="sk-nobody-listens-here",
        actor=admin_user,
    )
    campaign = _launch(manager, repos=1, model="{provider: down-provider, name: some-model}")
    runs_final(campaign, timeout=120)
    variant = Variant.objects.get(run__campaign=campaign)
    assert variant.state == VariantState.FAILED
    assert "model provider 'down-provider' is unreachable" in variant.error
    assert "model provider 'down-provider' is unreachable" in variant.output_tail


def test_a_spent_campaign_budget_stops_new_runs(secrets_key, celery_worker, admin_user, manager):
    with FakeModelServer() as fake:
        provider_set(
            name="fake-openai",
            api_style="openai",
            base_url=fake.base_url,
            key="sk-fake-key-for-budget",
            input_usd_per_mtok="3",
            output_usd_per_mtok="15",
            actor=admin_user,
        )
        # One call costs $0.00081: the first call spends the budget, the second is refused.
        campaign = _launch(
            manager,
            repos=3,
            max_parallel=1,
            model="{provider: fake-openai, name: fake-model, campaign_budget_usd: 0.0005}",
        )
        runs_final(campaign, timeout=180)
    runs = list(RepoRun.objects.filter(campaign=campaign).order_by("pk"))
    assert Sandbox.objects.filter(campaign_id=campaign.pk).count() == 1, "only the first run's"
    variants = list(Variant.objects.filter(run__campaign=campaign, attempt__gt=0))
    assert len(variants) == 1, "only the first run started a variant"
    assert variants[0].error.startswith("budget exhausted: the campaign's model budget is spent")
    # A later run's variant row may exist (on PostgreSQL the hand-off that gave the run its slot
    # makes it): it never started, and ends cancelled with its run.
    unstarted = Variant.objects.filter(run__campaign=campaign, attempt=0)
    assert set(unstarted.values_list("state", flat=True)) <= {VariantState.CANCELLED}
    later = [r for r in runs if r.pk != variants[0].run_id]
    assert [r.state for r in later] == [RunState.FAILED, RunState.FAILED]
    assert all("budget exhausted: the campaign's model budget" in r.error for r in later)
    assert ModelCall.objects.filter(campaign_id=campaign.pk, outcome="ok").count() == 1
    assert len(fake.requests) == 1
