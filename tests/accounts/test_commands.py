"""Operator commands: createuser, create_token, revoke_token, demo_seed."""

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.management.commands.demo_seed import demo_users_seed
from accounts.roles import user_role

pytestmark = pytest.mark.shapes("embedded", "production")


def test_createuser_with_password_file(tmp_path, db):
    pw = tmp_path / "pw"
    pw.write_text("s3cret-enough\n")
    call_command("createuser", "carol", "--role", "reviewer", "--password-file", str(pw))
    carol = User.objects.get(username="carol")
    assert user_role(carol) == "reviewer"
    assert Client().login(username="carol", password="s3cret-enough")


def test_createuser_refuses_duplicates_and_short_passwords(tmp_path, db):
    pw = tmp_path / "pw"
    pw.write_text("short")
    with pytest.raises(CommandError, match="password: must be at least 8"):
        call_command("createuser", "dave", "--role", "manager", "--password-file", str(pw))
    assert not User.objects.filter(username="dave").exists()
    pw.write_text("long-enough-pw")
    call_command("createuser", "dave", "--role", "manager", "--password-file", str(pw))
    with pytest.raises(CommandError, match="already exists"):
        call_command("createuser", "dave", "--role", "admin", "--password-file", str(pw))


def test_create_token_prints_a_working_token_and_revoke_token_kills_it(manager):
    out = io.StringIO()
    call_command("create_token", "mia", stdout=out, stderr=io.StringIO())
    raw = out.getvalue().strip()
    client = Client()
    assert (
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"}).json()["role"]
        == "manager"
    )
    call_command("revoke_token", "--user", "mia", stdout=io.StringIO())
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"}).status_code == 401
    # The host's operator did both, not mia: the trail said mia had made and revoked it.
    from audit.models import AuditEvent

    events = AuditEvent.objects.filter(action__in=["people.token.created", "people.token.revoked"])
    assert sorted(events.values_list("actor_type", "actor_id")) == [("system", "")] * 2


def test_create_token_for_unknown_user_names_the_problem(db):
    with pytest.raises(CommandError, match="no active user named 'nobody'"):
        call_command("create_token", "nobody")


def test_demo_users_seed_is_idempotent_and_passwords_work(db):
    first = demo_users_seed()
    second = demo_users_seed()
    assert first == second
    for username, role in (("manager", "manager"), ("reviewer", "reviewer"), ("admin", "admin")):
        assert user_role(User.objects.get(username=username)) == role
        assert Client().login(username=username, password=first[username])
