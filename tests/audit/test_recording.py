"""What audit_record writes: canonical bytes, fixed chain values, the client address as our
proxies saw it, every people action exactly once, and no change without its event."""

import hashlib
import json

import pytest
from django.db import connection
from django.test import Client

from accounts.models import ApiToken
from accounts.services import token_create, token_revoke, user_create, user_role_set
from audit import chain
from audit.models import AuditEvent
from audit.record import AuditWriteError, audit_hmac, audit_record
from tests.audit.trail import assert_trail
from tests.factories import PASSWORD

BOTH = pytest.mark.shapes("embedded", "production")


@BOTH
def test_chain_hash_has_fixed_values_for_known_inputs():
    first = chain.chain_hash(chain.GENESIS, 1, chain.content_hash(b"{}"))
    assert first.hex() == "6fd6df3fd6af949f0030bcf6b48f81a8620f1278081c93298eae5f75272fbedf"
    assert (
        first
        == hashlib.sha256(
            b"convoy-audit-v1\x00"
            + bytes(32)
            + (1).to_bytes(8, "big")
            + hashlib.sha256(b"{}").digest()
        ).digest()
    )
    second = chain.chain_hash(first, 2, chain.content_hash('{"a":"ü"}'.encode()))
    assert second.hex() == "21957eb493dfc080079c12a953ae20d1de075363a5ade389fb03972ba36778cb"


@BOTH
def test_merkle_root_matches_rfc6962_test_vectors():
    leaves = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        bytes(range(0x50, 0x58)),
        bytes(range(0x60, 0x70)),
    ]
    assert chain.merkle_root(leaves[:1]).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert chain.merkle_root(leaves).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )
    for n in range(len(leaves) + 1):
        frontier = chain.MerkleFrontier()
        for leaf in leaves[:n]:
            frontier.append(leaf)
        assert frontier.root() == chain.merkle_root(leaves[:n])


@BOTH
def test_hmac_lets_a_secret_be_matched_without_storing_it(settings):
    settings.SECRET_KEY = "k" * 50
    token = "cvy_s3cr3t-value"
    marked = audit_hmac(token)
    assert marked.startswith("hmac-sha256:") and token not in marked
    assert marked == audit_hmac(token) != audit_hmac(token + "x")


@BOTH
def test_event_body_is_canonical_json(db):
    event = audit_record(
        action="settings.setting.changed",
        actor_type="system",
        changes={"zeta": [1, 2], "alpha": ["ä", "b"]},
        context={"campaign_id": 42},
    )
    body = event.body
    assert body == json.dumps(
        json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert '"changes":{"alpha":["ä","b"],"zeta":[1,2]}' in body
    assert event.campaign_id == 42


def _login_ip(client: Client, **meta) -> str:
    client.post("/login/", {"username": "mia", "password": PASSWORD}, **meta)
    body = AuditEvent.objects.filter(action="people.login.succeeded").latest("id").body
    return json.loads(body)["actor"]["ip"]


@BOTH
def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(client, manager, settings):
    settings.TRUSTED_PROXY_HOPS = 0
    ip = _login_ip(client, REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="6.6.6.6")
    assert ip == "10.0.0.5"


@BOTH
def test_forwarded_for_is_believed_only_as_far_as_the_trusted_hops(client, manager, settings):
    settings.TRUSTED_PROXY_HOPS = 1
    ip = _login_ip(client, REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    assert ip == "203.0.113.9"  # what our proxy saw; the client-supplied 6.6.6.6 is ignored


@BOTH
def test_a_client_chosen_request_id_is_believed_only_through_trusted_proxies(manager, settings):
    """Events carry the request's id; taken from `X-Request-ID` only when our own proxies set
    it: a client could otherwise give its events another request's id."""

    def login_request_id(**meta) -> str:
        Client().post("/login/", {"username": "mia", "password": PASSWORD}, **meta)
        body = AuditEvent.objects.filter(action="people.login.succeeded").latest("id").body
        return json.loads(body)["context"]["request_id"]

    settings.TRUSTED_PROXY_HOPS = 0
    assert login_request_id(HTTP_X_REQUEST_ID="req-of-someone-else") != "req-of-someone-else"
    settings.TRUSTED_PROXY_HOPS = 1
    assert login_request_id(HTTP_X_REQUEST_ID="req-from-our-proxy") == "req-from-our-proxy"


@pytest.fixture
def audit_insert_fails(db):
    """Make the event table refuse inserts for this test only (DDL is transactional, so the
    test's rollback removes it): a real database failure, nothing mocked."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_auditevent "
            "FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()"
        )


def test_audit_write_failure_rolls_the_change_back(manager, audit_insert_fails):
    with pytest.raises(AuditWriteError, match=r"could not record people\.token\.created"):
        token_create(user=manager, name="ci")
    assert not ApiToken.objects.filter(user=manager).exists()


def test_api_caller_sees_an_error_and_no_token_when_audit_fails(client, manager):
    token_create(user=manager, name="first")
    client.force_login(manager)  # tokens are made from a signed-in session
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_auditevent "
            "FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()"
        )
    response = client.post("/api/v1/tokens", {"name": "second"}, content_type="application/json")
    assert response.status_code == 503
    assert "audit trail could not record it" in response.json()["detail"]
    assert list(ApiToken.objects.filter(user=manager).values_list("name", flat=True)) == ["first"]


@pytest.mark.django_db(transaction=True)
def test_people_actions_each_leave_exactly_one_complete_event(admin_user, reviewer):
    start = AuditEvent.objects.latest("id").pk
    carol = user_create(username="carol", role="reviewer", password=PASSWORD, actor=admin_user)
    user_role_set(user=carol, role="manager", actor=admin_user)
    token, _raw = token_create(user=carol, name="ci")
    token_revoke(token=token, actor=admin_user)
    client = Client()
    client.post("/login/", {"username": "carol", "password": "wrong-password"})
    client.post("/login/", {"username": "carol", "password": PASSWORD})
    assert client.get("/audit/").status_code == 403
    client.post("/logout/")
    admin = Client()
    admin.force_login(admin_user)
    admin.get("/audit/?q=actor:carol")
    b"".join(admin.post("/audit/export.csv").streaming_content)
    admin.post("/audit/verify/")
    assert_trail(
        [
            "people.user.created",
            "people.role.granted",
            "people.role.revoked",
            "people.role.granted",
            "people.token.created",
            "people.token.revoked",
            "people.login.failed",
            "people.login.succeeded",
            "people.permission.denied",
            "people.logout",
            "people.login.succeeded",  # the admin's session
            "audit.events.viewed",
            "audit.events.exported",
            "audit.chain.verified",
        ],
        after_id=start,
    )
