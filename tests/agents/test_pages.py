"""Model providers (page, API, command), the transcript tab and download, cost on the pages."""

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from accounts.services import token_create
from agents.grants import call_record, grant_mint
from agents.models import ModelProvider
from agents.providers import provider_set
from agents.usage import transcript_pack
from audit.models import AuditEvent
from tests.factories import PASSWORD, campaign_make, patch_for, run_make, variant_make

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db]

KEY = "sk-page-test-key-abcdef0123456789"


def _login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def _bearer(user):
    _, raw = token_create(user=user, name="t", scope="write")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _provider(admin, name="openai-main"):
    return provider_set(
        name=name,
        api_style="openai",
        base_url="https://models.example/v1",
        key=KEY,
        allowed_models=["gpt-5-codex"],
        actor=admin,
    )


def test_provider_page_adds_lists_and_removes(client, admin_user):
    _login(client, admin_user)
    response = client.post(
        reverse("agents-providers"),
        {
            "name": "openai-main",
            "api_style": "openai",
            "base_url": "https://models.example/v1",
            "key": KEY,
            "allowed_models": "gpt-5-codex, gpt-5-mini",
        },
    )
    assert response.status_code == 302
    provider = ModelProvider.objects.get(name="openai-main")
    assert provider.allowed_models == ["gpt-5-codex", "gpt-5-mini"]
    # Prices came from the price table for the first model.
    assert provider.input_usd_per_mtok > 0 and provider.output_usd_per_mtok > 0
    page = client.get(reverse("agents-providers")).content.decode()
    assert "openai-main" in page and KEY not in page
    client.post(reverse("agents-provider-delete", args=["openai-main"]))
    assert not ModelProvider.objects.filter(name="openai-main").exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"agents.provider.created", "agents.provider.removed"} <= actions
    assert KEY not in "".join(AuditEvent.objects.values_list("body", flat=True))


def test_a_providers_key_is_never_sent_to_a_new_host_without_being_given_again(admin_user):
    """Changing a provider's base URL kept its stored key, which the gateway then sent to
    the new host: whoever could edit providers (or held an admin's token) could collect the
    key without ever seeing it."""
    from agents.models import ModelProvider
    from core.errors import Invalid

    _provider(admin_user)
    moved = {"name": "openai-main", "api_style": "openai", "allowed_models": ["gpt-5-codex"]}
    with pytest.raises(Invalid) as refused:
        provider_set(base_url="https://collector.example/v1", key=None, actor=admin_user, **moved)
    assert refused.value.field == "key"
    assert ModelProvider.objects.get(name="openai-main").base_url == "https://models.example/v1"
    with pytest.raises(Invalid) as refused:  # another scheme is another host for this
        provider_set(base_url="http://models.example/v1", key=None, actor=admin_user, **moved)
    assert refused.value.field == "key"
    # The same host, another path: the key stays. A new host with the key given: fine.
    provider_set(base_url="https://models.example/v2", key=None, actor=admin_user, **moved)
    provider_set(base_url="https://other.example/v1", key="k3", actor=admin_user, **moved)


def test_provider_page_and_api_are_for_admins_only(client, manager, reviewer):
    _login(client, manager)
    assert client.get(reverse("agents-providers")).status_code == 403
    assert client.get("/api/v1/agents/providers", **_bearer(reviewer)).status_code == 403


def test_provider_api_stores_lists_and_deletes_without_echoing_the_key(client, admin_user):
    auth = _bearer(admin_user)
    body = {
        "name": "anthropic",
        "api_style": "anthropic",
        "base_url": "https://models.example/v1",
        "key": KEY,
        "allowed_models": ["claude-sonnet-4-5"],
        "input_usd_per_mtok": "3",
        "output_usd_per_mtok": "15",
    }
    response = client.post(
        "/api/v1/agents/providers", json.dumps(body), content_type="application/json", **auth
    )
    assert response.status_code == 201, response.content
    assert KEY not in response.content.decode()
    listed = client.get("/api/v1/agents/providers", **auth).json()
    assert [p["name"] for p in listed] == ["anthropic"]
    assert listed[0]["output_usd_per_mtok"] == "15.0000"
    bad = client.post(
        "/api/v1/agents/providers",
        json.dumps({**body, "api_style": "smoke-signals"}),
        content_type="application/json",
        **auth,
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "api_style"
    assert client.delete("/api/v1/agents/providers/anthropic", **auth).status_code == 204
    assert client.delete("/api/v1/agents/providers/anthropic", **auth).status_code == 404


_GOOD = {
    "name": "anthropic",
    "api_style": "anthropic",
    "base_url": "https://models.example/v1",
    "key": KEY,
    "allowed_models": ["claude-sonnet-4-5"],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"base_url": "https://[::1"}, "base_url"),
        ({"base_url": "https://a.com:99999/v1"}, "base_url"),
        ({"base_url": "https://a.com:abc/v1"}, "base_url"),
        ({"base_url": "https://a.com:0/v1"}, "base_url"),
        ({"base_url": "https://a.com/v1\ud800"}, "base_url"),
        ({"base_url": "https://user:secret@models.example/v1"}, "base_url"),
        ({"base_url": "https://user@models.example/v1"}, "base_url"),
        ({"key": "sk-\u0000x"}, "key"),
        ({"key": "sk-\ud800"}, "key"),
        ({"key": "sk-a\r\nX-Other: 1"}, "key"),
        ({"allowed_models": ["ok", "bad\u0000"]}, "allowed_models[1]"),
        ({"allowed_models": ["\ud800"]}, "allowed_models[0]"),
    ],
)
def test_a_bad_provider_url_key_or_model_is_a_422_naming_the_field(
    client, admin_user, change, field
):
    """These were 500s (urlsplit's and .port's ValueError, a surrogate the database cannot
    store) or were stored (a port past 65535, a NUL in a key or a model name)."""
    auth = _bearer(admin_user)
    body = json.dumps({**_GOOD, **change})  # escapes \ud800 and NUL as JSON does
    response = client.post(
        "/api/v1/agents/providers", body, content_type="application/json", **auth
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == field
    assert not ModelProvider.objects.exists()


@pytest.mark.parametrize(
    "base_url", ["https://models.example:99999/v1", "https://models.example:abc/v1"]
)
def test_updating_a_provider_to_a_bad_port_is_a_422(client, admin_user, base_url):
    auth = _bearer(admin_user)
    created = client.post(
        "/api/v1/agents/providers", json.dumps(_GOOD), content_type="application/json", **auth
    )
    assert created.status_code == 201
    response = client.post(
        "/api/v1/agents/providers",
        json.dumps({**_GOOD, "base_url": base_url, "key": None}),
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "base_url"
    assert ModelProvider.objects.get(name="anthropic").base_url == _GOOD["base_url"]


def test_provider_command_reads_the_key_from_the_environment(admin_user, monkeypatch):
    monkeypatch.setenv("TEST_PROVIDER_KEY", KEY)
    out = io.StringIO()
    call_command(
        "provider",
        "add",
        "local-llm",
        "--style=openai",
        "--base-url=http://models.example/v1",
        "--key-env=TEST_PROVIDER_KEY",
        "--models=qwen-coder",
        "--input-price=0.5",
        "--output-price=1",
        stdout=out,
    )
    call_command("provider", "ls", stdout=out)
    assert "local-llm\topenai\thttp://models.example/v1\tqwen-coder" in out.getvalue()
    assert KEY not in out.getvalue()
    with pytest.raises(CommandError, match="base_url"):
        call_command("provider", "add", "x", "--style=openai", "--base-url=ftp://a", stdout=out)
    call_command("provider", "rm", "local-llm", stdout=out)
    assert not ModelProvider.objects.exists()


def _variant_with_calls(manager, admin):
    _provider(admin)
    campaign = campaign_make(owner=manager, variants=("agent",))
    run = run_make(campaign=campaign)
    variant = variant_make(run=run, name="agent", patch=patch_for("a.py", "x", "y"))
    grant, token = grant_mint(
        campaign_id=campaign.pk,
        run_id=run.pk,
        variant_id=variant.pk,
        provider_name="openai-main",
        model="gpt-5-codex",
    )
    request = json.dumps({"model": "gpt-5-codex", "messages": [{"content": "<b>hi</b>"}]})
    call_record(
        grant=grant,
        provider_name="openai-main",
        model="gpt-5-codex",
        path="/v1/chat/completions",
        stream=False,
        status_code=200,
        outcome="ok",
        tokens_in=1000,
        tokens_out=500,
        latency_ms=42,
        transcript=transcript_pack(
            request=request.encode(),
            response=b'{"choices": [{"message": {"content": "done"}}]}',
            response_size=46,
            masks=(KEY, token),
        ),
        input_per_mtok=ModelProvider.objects.get().input_usd_per_mtok,
        output_per_mtok=ModelProvider.objects.get().output_usd_per_mtok,
    )
    return campaign, run, variant


def test_transcript_tab_and_download_for_reviewers(client, manager, reviewer, admin_user, outsider):
    campaign, run, variant = _variant_with_calls(manager, admin_user)
    url = reverse("agents-transcript", args=[variant.pk])
    _login(client, reviewer)
    page = client.get(url).content.decode()
    assert 'data-testid="transcript-call"' in page
    assert "&lt;b&gt;hi&lt;/b&gt;" in page and "<b>hi</b>" not in page  # escaped
    lines = b"".join(client.get(reverse("agents-transcript-jsonl", args=[variant.pk]))).splitlines()
    record = json.loads(lines[0])
    assert record["tokens_in"] == 1000 and record["request"]["model"] == "gpt-5-codex"
    # The comparison page shows the variant's tokens, cost and a link to the transcript.
    compare = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    assert 'data-testid="model-cost"' in compare and url in compare
    client.logout()
    _login(client, manager)  # may see the campaign, does not review
    assert client.get(url).status_code == 403
    client.logout()
    _login(client, outsider)
    assert client.get(url).status_code == 404


def test_campaign_page_shows_spend_against_the_budget(client, manager, admin_user):
    campaign, _run, _variant = _variant_with_calls(manager, admin_user)
    campaign.spec["model"] = {
        "provider": "openai-main",
        "name": "gpt-5-codex",
        "campaign_budget_usd": 10.0,
    }
    campaign.save(update_fields=["spec"])
    _login(client, manager)
    page = client.get(reverse("campaign-detail", args=[campaign.pk])).content.decode()
    assert 'data-testid="model-spend"' in page and "of $10.00 budget" in page


def test_campaign_status_prints_the_model_spend(manager, admin_user):
    campaign, _run, _variant = _variant_with_calls(manager, admin_user)
    campaign.spec["model"] = {"provider": "openai-main", "name": "gpt-5-codex"}
    campaign.save(update_fields=["spec"])
    out = io.StringIO()
    call_command("campaign", "status", campaign.name, stdout=out)
    assert "models: $" in out.getvalue() and "1 call(s), 1000 in / 500 out" in out.getvalue()
    out = io.StringIO()
    call_command("campaign", "status", campaign.name, "--json", stdout=out)
    assert json.loads(out.getvalue())["models"]["calls"] == 1
