"""A password change, one's own, an admin's reset or `manage.py changepassword`, revokes the
person's API tokens in the same transaction as the change and its event; a token used after
that is refused saying it was revoked."""

import io
import json

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import ApiToken
from accounts.services import token_create, token_revoke
from audit.models import AuditEvent
from tests.factories import PASSWORD

pytestmark = pytest.mark.shapes("embedded", "production")

NEW = "a-quite-different-passphrase"


def _auth(raw: str) -> dict:
    return {"Authorization": f"Bearer {raw}"}


def _payload(action: str) -> dict:
    (event,) = AuditEvent.objects.filter(action=action)
    return json.loads(event.body)["payload"]


def test_changing_ones_password_revokes_ones_api_tokens(client, manager, reviewer):
    _, first = token_create(user=manager, name="ci")
    _, second = token_create(user=manager, name="laptop", scope=ApiToken.Scope.WRITE)
    old, _ = token_create(user=manager, name="old")
    token_revoke(token=old)  # already revoked: not counted again
    _, others = token_create(user=reviewer, name="rob's")
    assert client.get("/api/v1/me", headers=_auth(first)).status_code == 200

    client.force_login(manager)
    form = {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW}
    page = client.post("/account/password/", form, follow=True)
    assert page.status_code == 200
    assert (
        "Your 2 API tokens were revoked; create new ones on the API tokens page."
        in page.content.decode()
    )
    assert _payload("people.password.changed") == {"username": "mia", "tokens_revoked": 2}

    for raw in (first, second):
        refused = Client().get("/api/v1/me", headers=_auth(raw))
        assert refused.status_code == 401
        assert refused.json()["code"] == "token_revoked"
        assert "was revoked" in refused.json()["detail"]
    # Another person's tokens are theirs; this browser's session survives its own change.
    assert Client().get("/api/v1/me", headers=_auth(others)).status_code == 200
    assert client.get("/account/tokens/").status_code == 200


def test_a_refused_password_change_keeps_the_tokens(client, manager):
    _, raw = token_create(user=manager, name="ci")
    client.force_login(manager)
    form = {"old_password": "wrong-one-entirely", "new_password1": NEW, "new_password2": NEW}
    assert client.post("/account/password/", form).status_code == 422
    assert Client().get("/api/v1/me", headers=_auth(raw)).status_code == 200
    assert not AuditEvent.objects.filter(action="people.password.changed").exists()


def test_an_admins_reset_revokes_the_persons_tokens_and_ends_their_sessions(
    client, admin_user, manager
):
    _, raw = token_create(user=manager, name="ci")
    theirs = Client()
    theirs.force_login(manager)
    assert theirs.get("/campaigns/").status_code == 200

    client.force_login(admin_user)
    page = client.post(f"/people/{manager.pk}/password/", {"password": NEW}, follow=True)
    assert page.status_code == 200
    html = page.content.decode()
    assert "password was set. Their 1 API token was revoked" in html
    assert _payload("people.password.reset") == {"username": "mia", "tokens_revoked": 1}
    refused = Client().get("/api/v1/me", headers=_auth(raw))
    assert (refused.status_code, refused.json()["code"]) == (401, "token_revoked")
    assert theirs.get("/campaigns/").status_code == 302  # to sign in again
    assert Client().login(username="mia", password=NEW)


def test_a_reset_is_for_admins_and_for_passwords_the_validators_pass(
    client, admin_user, manager, reviewer
):
    _, raw = token_create(user=reviewer, name="ci")
    client.force_login(manager)
    assert client.post(f"/people/{reviewer.pk}/password/", {"password": NEW}).status_code == 403

    client.force_login(admin_user)
    weak = client.post(f"/people/{reviewer.pk}/password/", {"password": "12345678"})
    assert weak.status_code == 422
    assert "New password:" in weak.content.decode()
    own = client.post(f"/people/{admin_user.pk}/password/", {"password": NEW})
    assert own.status_code == 422
    assert "Password page" in own.content.decode()
    assert not AuditEvent.objects.filter(action="people.password.reset").exists()
    assert Client().get("/api/v1/me", headers=_auth(raw)).status_code == 200
    assert Client().login(username="rob", password=PASSWORD)


def _events(action: str) -> list[dict]:
    return [json.loads(e.body) for e in AuditEvent.objects.filter(action=action).order_by("pk")]


def test_manage_py_changepassword_revokes_the_tokens_and_is_audited(monkeypatch, manager):
    """Django's own `changepassword` saved the new hash and nothing else: a token that leaked
    with the old password kept working, and the trail did not know. Now it goes through the
    same service as the pages."""
    _, raw = token_create(user=manager, name="ci")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": NEW)
    out = io.StringIO()
    call_command("changepassword", "mia", stdout=out)
    refused = Client().get("/api/v1/me", headers=_auth(raw))
    assert (refused.status_code, refused.json().get("code")) == (401, "token_revoked")
    assert "Password changed successfully for user 'mia'; 1 API token revoked" in out.getvalue()
    (event,) = _events("people.password.reset")
    assert event["actor"]["type"] == "system"
    assert event["payload"] == {
        "username": "mia",
        "tokens_revoked": 1,
        "command": "changepassword",
    }
    assert Client().login(username="mia", password=NEW)


def test_changepassword_sets_a_superusers_password_and_refuses_a_weak_one(tmp_path, db):
    root = User.objects.create_superuser("root", "root@example.test", PASSWORD)
    _, raw = token_create(user=root, name="ops")
    pw = tmp_path / "pw"
    pw.write_text("12345678\n")
    with pytest.raises(CommandError, match=r"password: .*too common"):
        call_command("changepassword", "root", "--password-file", str(pw))
    assert Client().get("/api/v1/me", headers=_auth(raw)).status_code == 200
    assert not AuditEvent.objects.filter(action="people.password.reset").exists()

    pw.write_text(NEW + "\n")
    call_command("changepassword", "root", "--password-file", str(pw), stdout=io.StringIO())
    assert Client().get("/api/v1/me", headers=_auth(raw)).status_code == 401
    assert _events("people.password.reset")[0]["payload"]["tokens_revoked"] == 1
    assert Client().login(username="root", password=NEW)
    with pytest.raises(CommandError, match="user 'nobody' does not exist"):
        call_command("changepassword", "nobody", "--password-file", str(pw))


def test_the_demo_seed_resetting_a_password_revokes_the_tokens(manager, settings):
    """`demo_seed` sets a demo user's password back to the one in its file: a change too."""
    from accounts.management.commands.demo_seed import demo_users_seed

    demo_users_seed()
    seeded = User.objects.get(username="manager")
    seeded.set_password(NEW)
    seeded.save()
    _, raw = token_create(user=seeded, name="ci")
    passwords = demo_users_seed()
    assert Client().get("/api/v1/me", headers=_auth(raw)).status_code == 401
    (event,) = _events("people.password.reset")
    assert event["payload"]["command"] == "demo_seed"
    assert Client().login(username="manager", password=passwords["manager"])


@pytest.mark.parametrize("command", ["changepassword", "createuser"])
def test_a_password_file_gives_its_first_line(command, tmp_path, db):
    """The help said "the file's first line" and the command read the whole file: a note on a
    second line became part of the password."""
    User.objects.create_user("ned", password=PASSWORD)
    pw = tmp_path / "pw"
    pw.write_text(NEW + "\r\nchanged by ops, ticket 12\n")
    args = ["ned"] if command == "changepassword" else ["nora", "--role", "reviewer"]
    call_command(command, *args, "--password-file", str(pw), stdout=io.StringIO())
    assert Client().login(username=args[0], password=NEW)
