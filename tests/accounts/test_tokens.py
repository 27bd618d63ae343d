"""API tokens' expiry and scope, as a program using one and a person making one see them."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import Campaign
from tests.factories import repos_make, spec_for

pytestmark = pytest.mark.shapes("embedded", "production")


def _auth(raw: str) -> dict:
    return {"Authorization": f"Bearer {raw}"}


def test_an_expired_token_is_refused_saying_it_expired(client, manager):
    token, raw = token_create(user=manager, name="ci")
    assert client.get("/api/v1/me", headers=_auth(raw)).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/me", headers=_auth(raw))
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "token_expired"
    assert "expired" in body["detail"] and token.prefix in body["detail"]
    assert "valid API token" not in body["detail"]  # not the unknown token's answer
    # An unknown token still gets the plain refusal.
    assert client.get("/api/v1/me", headers=_auth(raw + "x")).json()["code"] == "unauthenticated"


def test_a_read_token_reads_but_is_refused_on_a_post_naming_its_scope(client, manager):
    tag, _ = repos_make(1)
    _read, raw = token_create(user=manager, name="dashboard", scope="read")
    assert client.get("/api/v1/campaigns", headers=_auth(raw)).status_code == 200
    create = {"yaml": spec_for(tag, name="cleanup")}
    refused = client.post(
        "/api/v1/campaigns", create, content_type="application/json", headers=_auth(raw)
    )
    assert refused.status_code == 403, refused.content
    assert "scope is read" in refused.json()["detail"]
    assert not Campaign.objects.exists()
    denied = AuditEvent.objects.filter(action="people.permission.denied").latest("id")
    assert json.loads(denied.body)["actor"]["token"].endswith(_read.prefix)
    _write, raw = token_create(user=manager, name="ci", scope="write")
    made = client.post(
        "/api/v1/campaigns", create, content_type="application/json", headers=_auth(raw)
    )
    assert made.status_code == 201, made.content


def test_a_new_token_is_read_only_for_90_days_unless_asked_and_its_event_says_so(client, manager):
    client.force_login(manager)
    made = client.post("/api/v1/tokens", {"name": "x"}, content_type="application/json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["scope"] == "read" and body["expires_soon"] is False
    token = ApiToken.objects.get(pk=body["id"])
    assert timedelta(days=89) < token.expires_at - timezone.now() <= timedelta(days=90)
    event = AuditEvent.objects.get(action="people.token.created")
    payload = json.loads(event.body)["payload"]
    assert payload["scope"] == "read"
    assert payload["expires_at"] == token.expires_at.isoformat()


def test_a_lifetime_over_the_maximum_is_refused_naming_days_in_the_api(client, manager, settings):
    client.force_login(manager)
    response = client.post("/api/v1/tokens", {"days": 367}, content_type="application/json")
    assert response.status_code == 422, response.content
    assert [e["field"] for e in response.json()["errors"]] == ["days"]
    assert "366" in response.json()["detail"]
    for days in (0, -5, 10**30):
        response = client.post("/api/v1/tokens", {"days": days}, content_type="application/json")
        assert response.status_code == 422 and response.json()["errors"][0]["field"] == "days"
    settings.API_TOKEN_MAX_DAYS = 30  # CONVOY_API_TOKEN_MAX_DAYS
    response = client.post("/api/v1/tokens", {"days": 31}, content_type="application/json")
    assert response.status_code == 422 and "30" in response.json()["detail"]
    assert not ApiToken.objects.exists()
    default = client.post("/api/v1/tokens", {}, content_type="application/json").json()
    assert default["expires_at"][:10] == (timezone.now() + timedelta(days=30)).date().isoformat()
    scope = client.post("/api/v1/tokens", {"scope": "admin"}, content_type="application/json")
    assert scope.status_code == 422 and scope.json()["errors"][0]["field"] == "scope"


def test_the_token_list_shows_expiry_and_marks_tokens_expiring_within_a_week(client, manager):
    _soon, _ = token_create(user=manager, name="soon", days=3)
    later, _ = token_create(user=manager, name="later", days=60)
    client.force_login(manager)
    listed = {t["name"]: t for t in client.get("/api/v1/tokens").json()}
    assert listed["soon"]["expires_soon"] is True and listed["later"]["expires_soon"] is False
    assert listed["later"]["expires_at"] == later.expires_at.isoformat()
    page = client.get("/account/tokens/").content.decode()
    assert page.count('data-testid="token-expires-soon"') == 1
    assert later.expires_at.strftime("%Y-%m-%d") in page and "soon" in page


def test_the_tokens_page_makes_a_token_and_refuses_a_lifetime_over_the_maximum(client, manager):
    client.force_login(manager)
    refused = client.post("/account/tokens/", {"name": "ci", "days": 400, "scope": "write"})
    assert refused.status_code == 422
    page = refused.content.decode()
    assert 'id="id_days_error"' in page and "1 to 366 days" in page
    assert not ApiToken.objects.exists()
    made = client.post("/account/tokens/", {"name": "ci", "days": 30, "scope": "write"})
    assert made.status_code == 200
    token = ApiToken.objects.get()
    assert token.scope == "write"
    raw = made.context["raw"]
    assert raw in made.content.decode()  # shown once, on this answer
    assert raw not in client.get("/account/tokens/").content.decode()
    assert Client().get("/api/v1/me", headers=_auth(raw)).status_code == 200
    revoked = client.post(f"/account/tokens/{token.pk}/revoke/")
    assert revoked.status_code == 302
    assert Client().get("/api/v1/me", headers=_auth(raw)).status_code == 401


def test_create_token_takes_a_scope_and_a_lifetime(manager):
    out = io.StringIO()
    call_command(
        "create_token", "mia", "--scope", "write", "--days", "5", stdout=out, stderr=io.StringIO()
    )
    token = ApiToken.objects.get()
    assert token.scope == "write"
    assert timedelta(days=4) < token.expires_at - timezone.now() <= timedelta(days=5)
    with pytest.raises(CommandError, match="--days: a token lives 1 to 366 days"):
        call_command("create_token", "mia", "--days", "400", stderr=io.StringIO())
    call_command("create_token", "mia", stdout=io.StringIO(), stderr=io.StringIO())
    assert ApiToken.objects.latest("id").scope == "read"
