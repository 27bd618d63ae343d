"""Signing in, CSRF, API tokens and roles, as a user and an API client see them."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import token_create, token_revoke
from audit.models import AuditEvent
from tests.factories import PASSWORD

pytestmark = pytest.mark.shapes("embedded", "production")


def test_wrong_password_is_refused_clearly_and_audited(client, manager):
    response = client.post("/login/", {"username": "mia", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    assert not response.wsgi_request.user.is_authenticated
    event = AuditEvent.objects.get(action="people.login.failed")
    assert event.outcome == "failure"
    assert '"username":"mia"' in event.body
    assert "nope" not in event.body


def test_unknown_user_gets_the_same_refusal(client, db):
    response = client.post("/login/", {"username": "ghost", "password": "whatever1"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_login_without_csrf_token_is_refused_with_a_page_not_a_500(manager):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "mia", "password": PASSWORD})
    assert response.status_code == 403
    assert b"without a valid security token" in response.content


def test_login_then_dashboard_shows_role(client, manager):
    response = client.post("/login/", {"username": "mia", "password": PASSWORD}, follow=True)
    assert response.status_code == 200
    assert b'data-testid="role">manager' in response.content
    assert (
        AuditEvent.objects.filter(action="people.login.succeeded", actor_display="mia").count() == 1
    )


def test_dashboard_requires_login(client, db):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_navigation_shows_audit_only_to_admins(client, admin_user, reviewer):
    client.force_login(reviewer)
    assert b"Audit" not in client.get("/").content
    client.force_login(admin_user)
    assert b"Audit" in client.get("/").content


def test_api_without_token_is_401(client, db):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert "Authentication required" in response.json()["detail"]


def test_the_api_docs_are_for_signed_in_people_and_token_holders(client, reviewer):
    """The docs page and the OpenAPI document were public: anyone could read every route."""
    page = client.get("/api/v1/docs")
    assert page.status_code == 302
    assert page["Location"] == "/login/?next=/api/v1/docs"
    document = client.get("/api/v1/openapi.json")
    assert document.status_code == 401
    assert document.json()["code"] == "unauthenticated"
    assert "/api/v1/me" not in document.content.decode()
    revoked, raw_revoked = token_create(user=reviewer, name="old")
    token_revoke(token=revoked)
    bad = {"Authorization": f"Bearer {raw_revoked}"}
    refused = client.get("/api/v1/openapi.json", headers=bad)
    assert (refused.status_code, refused.json()["code"]) == (401, "token_revoked")

    _, raw = token_create(user=reviewer, name="ci")
    document = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {raw}"})
    assert document.status_code == 200
    assert "/api/v1/me" in document.json()["paths"]
    client.force_login(reviewer)
    assert client.get("/api/v1/docs").status_code == 200
    assert "/api/v1/me" in client.get("/api/v1/openapi.json").json()["paths"]


def test_an_expired_token_on_the_api_docs_is_a_401_saying_so(client, reviewer):
    """The docs' guard let the expired-token refusal escape: a server error, not the API's 401."""
    token, raw = token_create(user=reviewer, name="old")
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    for path in ("/api/v1/openapi.json", "/api/v1/docs"):
        response = client.get(path, headers={"Authorization": f"Bearer {raw}"})
        assert response.status_code == 401, path
        assert response.json()["code"] == "token_expired"
        assert token.prefix in response.json()["detail"]


def test_api_with_token_returns_caller_and_role(client, reviewer):
    token, raw = token_create(user=reviewer, name="ci")
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200
    assert response.json() == {
        "id": reviewer.pk,
        "username": "rob",
        "role": "reviewer",
        "capabilities": ["change_review"],
        "auth": "token",
    }
    stored = ApiToken.objects.get(pk=token.pk)
    assert raw not in (stored.digest, stored.prefix)  # only a hash is kept


def test_revoked_token_is_401(client, reviewer):
    token, raw = token_create(user=reviewer)
    token_revoke(token=token)
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 401
    assert response.json()["code"] == "token_revoked"
    assert f"This API token ({token.prefix}…) was revoked" in response.json()["detail"]


def test_malformed_and_unknown_tokens_are_401(client, reviewer):
    for header in ("Bearer cvy_doesnotexist", "Bearer ", "Basic abc", "Bearer " + "x" * 5000):
        assert client.get("/api/v1/me", headers={"Authorization": header}).status_code == 401


def test_session_api_post_needs_csrf(manager):
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    assert client.get("/api/v1/me").status_code == 200
    response = client.post("/api/v1/tokens", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not ApiToken.objects.exists()


def test_token_created_through_api_works_and_can_be_revoked(client, manager):
    client.force_login(manager)
    created = client.post("/api/v1/tokens", {"name": "laptop"}, content_type="application/json")
    assert created.status_code == 201
    raw = created.json()["token"]
    other = Client()
    assert other.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"}).status_code == 200
    revoked = client.delete(f"/api/v1/tokens/{created.json()['id']}")
    assert revoked.json()["revoked"] is True
    assert other.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"}).status_code == 401
    actions = list(
        AuditEvent.objects.filter(action__startswith="people.token").values_list(
            "action", flat=True
        )
    )
    assert actions == ["people.token.created", "people.token.revoked"]


def test_a_token_cannot_mint_tokens_and_its_actions_name_it(client, manager):
    """A leaked token that could mint tokens left working children once it was revoked: tokens
    are made from a signed-in session only. Events made with a token name that token, so an
    admin can trace what a leaked one did."""
    import json

    token, raw = token_create(user=manager, name="ci", scope="write")
    auth = {"Authorization": f"Bearer {raw}"}
    minted = client.post(
        "/api/v1/tokens", {"name": "child"}, content_type="application/json", headers=auth
    )
    assert minted.status_code == 403, minted.content
    assert "signed-in session" in minted.json()["detail"]
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["ci"]
    denied = AuditEvent.objects.filter(action="people.permission.denied").latest("id")
    assert json.loads(denied.body)["actor"]["token"] == f"{token.pk}:{token.prefix}"
