"""Spending ceilings an admin sets on a model provider: who sets them, the specs they refuse,
the budget a spec without one gets, and the check again at preview and launch."""

import io
import json
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from accounts.services import token_create
from agents.grants import grant_mint
from agents.models import ModelProvider
from agents.providers import provider_set
from agents.spec import model_for_variant
from audit.models import AuditEvent
from campaigns.models import Campaign, CampaignState, RepoRun
from campaigns.services import campaign_create
from tests.factories import repos_make

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db]

KEY = "sk-ceiling-test-key-0123456789"


def _bearer(user) -> dict:
    _, raw = token_create(user=user, name="t", scope="write")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _provider(admin, **ceilings):
    return provider_set(
        name="openai-main",
        api_style="openai",
        base_url="https://models.example/v1",
        key=KEY,
        allowed_models=["gpt-5-codex"],
        actor=admin,
        **ceilings,
    )


def _spec(tag: str, *, model: str, variant_model: str = "") -> str:
    second = f", model: {variant_model}" if variant_model else ""
    return (
        f"name: agents-{tag}\n"
        f"repos: {{tag: {tag}}}\n"
        'transform: {run: "true"}\n'
        f"model: {model}\n"
        "variants:\n"
        "  - {name: a}\n"
        f"  - {{name: b{second}}}\n"
    )


def _events(action: str) -> list[dict]:
    rows = AuditEvent.objects.filter(action=action).order_by("pk").values_list("body", flat=True)
    return [json.loads(body) for body in rows]


def test_a_new_provider_gets_the_default_ceiling_and_the_change_is_audited(admin_user):
    provider = _provider(admin_user)
    assert provider.max_campaign_budget_usd == Decimal("50.00")
    assert provider.max_run_budget_usd is None
    created = _events("agents.provider.created")[-1]["payload"]
    assert created["max_campaign_budget_usd"] == "50.00" and created["max_run_budget_usd"] is None
    # Changing the key only keeps the ceilings; changing them records old and new.
    provider_set(
        name="openai-main",
        api_style="openai",
        base_url="https://models.example/v1",
        key=None,
        allowed_models=["gpt-5-codex"],
        max_campaign_budget_usd="20",
        max_run_budget_usd="2.5",
        actor=admin_user,
    )
    provider.refresh_from_db()
    assert provider.max_campaign_budget_usd == Decimal("20.00")
    assert provider.max_run_budget_usd == Decimal("2.50")
    updated = _events("agents.provider.updated")[-1]
    assert updated["changes"] == {
        "max_campaign_budget_usd": ["50.00", "20.00"],
        "max_run_budget_usd": [None, "2.50"],
    }
    assert updated["actor"]["id"] == str(admin_user.pk)


def test_only_admins_change_ceilings(client, admin_user, manager, reviewer):
    _provider(admin_user)
    body = {
        "name": "openai-main",
        "api_style": "openai",
        "base_url": "https://models.example/v1",
        "allowed_models": ["gpt-5-codex"],
        "max_campaign_budget_usd": "5000",
    }
    for user in (manager, reviewer):
        refused = client.post(
            "/api/v1/agents/providers",
            json.dumps(body),
            content_type="application/json",
            **_bearer(user),
        )
        assert refused.status_code == 403
        client.force_login(user)
        page = client.post(reverse("agents-providers"), {**body, "allowed_models": "gpt-5-codex"})
        assert page.status_code == 403
        client.logout()
    assert ModelProvider.objects.get().max_campaign_budget_usd == Decimal("50.00")
    assert not _events("agents.provider.updated")
    assert AuditEvent.objects.filter(action="people.permission.denied").count() == 4
    # An admin may, through the API (omitting max_run_budget_usd keeps it, null removes it).
    auth = _bearer(admin_user)
    stored = client.post(
        "/api/v1/agents/providers",
        json.dumps({**body, "max_campaign_budget_usd": "75", "max_run_budget_usd": "3"}),
        content_type="application/json",
        **auth,
    )
    assert stored.status_code == 201, stored.content
    assert stored.json()["max_campaign_budget_usd"] == "75.00"
    assert stored.json()["max_run_budget_usd"] == "3.00"
    kept = client.post(
        "/api/v1/agents/providers", json.dumps(body), content_type="application/json", **auth
    )
    assert kept.json()["max_run_budget_usd"] == "3.00"
    removed = client.post(
        "/api/v1/agents/providers",
        json.dumps({**body, "max_run_budget_usd": None}),
        content_type="application/json",
        **auth,
    )
    assert removed.json()["max_run_budget_usd"] is None
    assert removed.json()["max_campaign_budget_usd"] == "5000.00"
    # and on the page, whose Edit link fills the form with the stored ceilings.
    client.force_login(admin_user)
    form = client.get(reverse("agents-providers") + "?edit=openai-main").content.decode()
    assert 'name="max_campaign_budget_usd" value="5000.00"' in form
    saved = client.post(
        reverse("agents-providers"),
        {**body, "allowed_models": "gpt-5-codex", "max_campaign_budget_usd": "12.50"},
    )
    assert saved.status_code == 302
    page = client.get(reverse("agents-providers")).content.decode()
    assert '<td data-testid="ceiling-campaign">$12.50</td>' in page


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_campaign_budget_usd": "0"}, "max_campaign_budget_usd"),
        ({"max_campaign_budget_usd": "-3"}, "max_campaign_budget_usd"),
        ({"max_campaign_budget_usd": "2000000"}, "max_campaign_budget_usd"),
        ({"max_run_budget_usd": "0.001"}, "max_run_budget_usd"),
    ],
)
def test_a_bad_ceiling_is_a_422_naming_it(client, admin_user, change, field):
    body = {
        "name": "openai-main",
        "api_style": "openai",
        "base_url": "https://models.example/v1",
        "key": KEY,
        **change,
    }
    response = client.post(
        "/api/v1/agents/providers",
        json.dumps(body),
        content_type="application/json",
        **_bearer(admin_user),
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == field
    assert not ModelProvider.objects.exists()


def test_provider_command_sets_and_removes_ceilings(admin_user, monkeypatch):
    monkeypatch.setenv("TEST_PROVIDER_KEY", KEY)
    add = ["provider", "add", "local-llm", "--style=openai", "--base-url=http://m.example/v1"]
    out = io.StringIO()
    call_command(
        *add,
        "--key-env=TEST_PROVIDER_KEY",
        "--max-campaign-budget=30",
        "--max-run-budget=2",
        stdout=out,
    )
    call_command("provider", "ls", stdout=out)
    assert "ceilings $30.00/campaign, $2.00/variant" in out.getvalue()
    call_command(*add, "--max-run-budget=none", stdout=out)
    provider = ModelProvider.objects.get()
    assert (provider.max_campaign_budget_usd, provider.max_run_budget_usd) == (30, None)
    with pytest.raises(CommandError, match="max_campaign_budget_usd"):
        call_command(*add, "--max-campaign-budget=lots", stdout=out)
    assert len(_events("agents.provider.updated")) == 1


def test_a_spec_over_a_ceiling_is_refused_naming_the_field(client, admin_user, manager):
    _provider(admin_user, max_campaign_budget_usd="20", max_run_budget_usd="2")
    tag, _ = repos_make(1)
    spec = _spec(
        tag,
        model="{provider: openai-main, name: gpt-5-codex, campaign_budget_usd: 25}",
        variant_model="{budget_usd: 3}",
    )
    response = client.post(
        "/api/v1/campaigns",
        json.dumps({"yaml": spec}),
        content_type="application/json",
        **_bearer(manager),
    )
    assert response.status_code == 422, response.content
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert set(errors) == {"model.campaign_budget_usd", "variants[1].model.budget_usd"}
    assert (
        "above the ceiling an admin set on provider 'openai-main'"
        in errors["model.campaign_budget_usd"]
    )
    assert "($20.00, max_campaign_budget_usd)" in errors["model.campaign_budget_usd"]
    assert "($2.00, max_run_budget_usd)" in errors["variants[1].model.budget_usd"]
    # The page refuses it the same way, beside the spec.
    client.force_login(manager)
    page = client.post("/campaigns/new/", {"spec": spec})
    assert page.status_code == 200
    text = page.content.decode()
    assert "model.campaign_budget_usd: $25 is above the ceiling" in text
    assert "variants[1].model.budget_usd: $3 is above the ceiling" in text
    assert not Campaign.objects.exists()
    # At the ceilings, it is accepted.
    at = _spec(
        tag,
        model="{provider: openai-main, name: gpt-5-codex, campaign_budget_usd: 20}",
        variant_model="{budget_usd: 2}",
    )
    assert campaign_create(actor=manager, source=at).state == CampaignState.DRAFT


def test_a_spec_without_a_campaign_budget_gets_the_ceiling(client, admin_user, manager):
    _provider(admin_user, max_campaign_budget_usd="12.50", max_run_budget_usd="1.25")
    tag, _ = repos_make(1)
    campaign = campaign_create(
        actor=manager, source=_spec(tag, model="{provider: openai-main, name: gpt-5-codex}")
    )
    client.force_login(manager)
    page = client.get(reverse("campaign-detail", args=[campaign.pk])).content.decode()
    assert "of $12.50 budget (the provider's ceiling)" in page  # the spend line
    assert "Its models may spend up to $12.50 (the provider's ceiling)." in page  # launch
    # The grant a variant gets (as campaigns.agents mints it, from the spec's model) holds the
    # ceilings: the gateway enforces them (test_gateway: the calls past it are refused).
    model = model_for_variant(campaign.spec, campaign.spec["variants"][0])
    grant, _token = grant_mint(
        campaign_id=campaign.pk,
        run_id=1,
        variant_id=1,
        provider_name=model["provider"],
        model=model["name"],
        budget_usd=model.get("budget_usd"),
        campaign_budget_usd=model.get("campaign_budget_usd"),
    )
    assert grant.campaign_budget_usd == Decimal("12.50")
    assert grant.budget_usd == Decimal("1.25")
    minted = _events("agents.grant.minted")[-1]["payload"]
    assert (minted["campaign_budget_usd"], minted["budget_usd"]) == ("12.50", "1.25")


def test_a_ceiling_lowered_after_the_spec_was_saved_refuses_launch_and_preview(
    client, admin_user, manager
):
    _provider(admin_user)
    tag, _ = repos_make(2)
    spec = _spec(tag, model="{provider: openai-main, name: gpt-5-codex, campaign_budget_usd: 40}")
    campaign = campaign_create(actor=manager, source=spec)
    _provider(admin_user, max_campaign_budget_usd="30")
    launched = client.post(f"/api/v1/campaigns/{campaign.pk}/launch", **_bearer(manager))
    assert launched.status_code == 422, launched.content
    error = launched.json()["errors"][0]
    assert error["field"] == "model.campaign_budget_usd"
    assert "$40 is above the ceiling" in error["message"] and "$30.00" in error["message"]
    client.force_login(manager)
    for action in ("preview", "launch"):
        page = client.post(reverse("campaign-action", args=[campaign.pk, action]), {"sample": 1})
        assert page.status_code == 422
        assert "model.campaign_budget_usd: $40 is above the ceiling" in page.content.decode()
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.DRAFT and not RepoRun.objects.exists()
    assert not AuditEvent.objects.filter(action="campaign.campaign.launched").exists()
    # A grant minted for a campaign already running when the ceiling came down gets the ceiling.
    grant, _token = grant_mint(
        campaign_id=campaign.pk,
        run_id=1,
        variant_id=1,
        provider_name="openai-main",
        model="gpt-5-codex",
        campaign_budget_usd=40,
    )
    assert grant.campaign_budget_usd == Decimal("30.00")
