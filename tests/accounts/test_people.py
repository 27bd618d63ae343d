"""The People page: admins add people, set roles, deactivate and reactivate them, audited; no
one else may, and nobody can lock the installation out of its last admin."""

import contextlib
import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts.roles import user_role
from accounts.services import token_create
from audit.models import AuditEvent
from tests.factories import PASSWORD

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_admins_see_everyone_with_their_role(admin_client, manager, reviewer):
    page = admin_client.get("/people/")
    assert page.status_code == 200
    html = page.content.decode()
    for name in ("ada", "mia", "rob"):
        assert f">{name}" in html
    assert '<option value="reviewer" selected>' in html
    assert 'href="/people/"' in html  # in the navigation, for admins


@pytest.mark.parametrize("who", ["manager", "reviewer", "outsider"])
def test_no_one_else_may_see_or_change_people(client, request, who, admin_user):
    client.force_login(request.getfixturevalue(who))
    assert client.get("/people/").status_code == 403
    assert client.post("/people/", {"username": "x", "role": "admin"}).status_code == 403
    response = client.post(f"/people/{admin_user.pk}/", {"active": "0"})
    assert response.status_code == 403
    assert User.objects.get(pk=admin_user.pk).is_active
    assert 'href="/people/"' not in client.get("/").content.decode()


def test_an_added_person_can_sign_in_with_their_role(admin_client, admin_user):
    response = admin_client.post(
        "/people/",
        {"username": "nina", "email": "nina@example.com", "role": "reviewer", "password": "p" * 12},
    )
    assert response.status_code == 302
    nina = User.objects.get(username="nina")
    assert user_role(nina) == "reviewer"
    assert Client().login(username="nina", password="p" * 12)
    created = AuditEvent.objects.get(action="people.user.created", target_id=str(nina.pk))
    assert created.actor_id == str(admin_user.pk) and '"username":"nina"' in created.body
    assert AuditEvent.objects.filter(action="people.role.granted", target_id=str(nina.pk)).exists()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (
            {"username": "mia", "role": "manager", "password": "p" * 12},
            "username",
            "already exists",
        ),
        ({"username": "nina", "role": "manager", "password": "short"}, "password", "at least 8"),
        ({"username": "nina", "role": "king", "password": "p" * 12}, "role", "not one of"),
        ({"username": "", "role": "manager", "password": "p" * 12}, "username", "required"),
        # An admin's choice passes the validators a person's own change passes.
        ({"username": "nina", "role": "manager", "password": "12345678"}, "password", "common"),
        ({"username": "Mia", "role": "manager", "password": "p" * 12}, "username", "'mia'"),
        ({"username": "ni\u202ena", "role": "manager", "password": "p" * 12}, "username", "only"),
        ({"username": "ni na", "role": "manager", "password": "p" * 12}, "username", "only"),
    ],
)
def test_bad_input_is_refused_beside_its_field_and_nothing_is_stored(
    admin_client, manager, data, field, message
):
    before = User.objects.count()
    response = admin_client.post("/people/", data)
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field])
    assert User.objects.count() == before
    assert not AuditEvent.objects.filter(action="people.user.created", body__contains="nina")


def test_a_role_change_comes_back_as_the_persons_row_and_is_audited(admin_client, manager):
    response = admin_client.post(
        f"/people/{manager.pk}/", {"role": "reviewer"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<tr id="person-{manager.pk}"')
    assert '<option value="reviewer" selected>' in html
    assert user_role(User.objects.get(pk=manager.pk)) == "reviewer"
    actions = set(
        AuditEvent.objects.filter(target_id=str(manager.pk)).values_list("action", flat=True)
    )
    assert {"people.role.revoked", "people.role.granted"} <= actions


def test_a_deactivated_person_cannot_sign_in_or_use_a_token_until_reactivated(
    admin_client, manager
):
    _, raw = token_create(user=manager)
    response = admin_client.post(f"/people/{manager.pk}/", {"active": "0"})
    assert response.status_code == 302
    assert not Client().login(username="mia", password=PASSWORD)
    api = Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.status_code == 401
    assert AuditEvent.objects.filter(action="people.user.deactivated").count() == 1

    admin_client.post(f"/people/{manager.pk}/", {"active": "1"})
    assert Client().login(username="mia", password=PASSWORD)
    assert AuditEvent.objects.filter(action="people.user.reactivated").count() == 1


def test_reactivating_a_person_does_not_bring_back_their_old_tokens_or_sessions(
    admin_client, manager
):
    """Deactivation is often for a leaked token or a stolen session: reactivation made every
    old token and session valid again. They are ended when the person is deactivated."""
    _, raw = token_create(user=manager)
    browser = Client()
    browser.force_login(manager)
    assert browser.get("/campaigns/").status_code == 200
    admin_client.post(f"/people/{manager.pk}/", {"active": "0"})
    admin_client.post(f"/people/{manager.pk}/", {"active": "1"})
    api = Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.status_code == 401
    assert browser.get("/campaigns/").status_code == 302  # to sign in again
    (event,) = AuditEvent.objects.filter(action="people.user.deactivated")
    assert json.loads(event.body)["payload"]["tokens_revoked"] == 1


def test_the_last_admin_can_be_neither_demoted_nor_deactivated(admin_client, admin_user):
    me = admin_user.pk
    demote = admin_client.post(f"/people/{me}/", {"role": "manager"}, HTTP_HX_REQUEST="true")
    assert demote.status_code == 400
    assert "last admin" in demote.content.decode()
    assert user_role(User.objects.get(pk=me)) == "admin"
    # Nor by deactivation: yourself never, and no other admin's last either.
    itself = admin_client.post(f"/people/{me}/", {"active": "0"}, HTTP_HX_REQUEST="true")
    assert itself.status_code == 400 and "yourself" in itself.content.decode()
    assert User.objects.get(pk=me).is_active
    # With a second admin, the first may step down.
    second = User.objects.create_user(username="zed", password=PASSWORD)
    admin_client.post(f"/people/{second.pk}/", {"role": "admin"})
    assert admin_client.post(f"/people/{me}/", {"role": "manager"}).status_code == 302
    assert user_role(User.objects.get(pk=me)) == "manager"


def test_changing_someone_who_does_not_exist_is_a_404(admin_client):
    assert admin_client.post("/people/999999/", {"role": "manager"}).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_two_admins_demoting_each_other_at_once_leave_one(monkeypatch):
    """Each demotion checks that another admin remains. Two at once each saw the other still
    there, and both went: nobody could manage people any more. The check now waits for the
    other change; here each waits up to 2 s for the other to reach it."""
    import threading

    from django.db import connection

    from accounts import services
    from accounts.services import AccountError, user_role_set
    from tests.factories import user_make

    if connection.vendor != "postgresql":
        pytest.skip("SQLite lets one writer at a time in: the race needs two")
    a, b = user_make(role="admin", username="a1"), user_make(role="admin", username="b1")
    both_checked = threading.Barrier(2, timeout=2)
    check = services._other_active_admins

    def checked_together(user):
        found = check(user)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait()  # without the lock, both checks are done before either commits
        return found

    monkeypatch.setattr(services, "_other_active_admins", checked_together)
    refused: list = []

    def demote(target, actor) -> None:
        try:
            user_role_set(user=User.objects.get(pk=target.pk), role="reviewer", actor=actor)
        except AccountError as exc:
            refused.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=(b, a)),
        threading.Thread(target=demote, args=(a, b)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    roles = sorted(user_role(User.objects.get(pk=u.pk)) for u in (a, b))
    assert roles == ["admin", "reviewer"] and len(refused) == 1


def test_a_superusers_role_is_not_changed_in_the_app(admin_user):
    """A superuser is an admin whatever their groups: a "demotion" was audited and changed
    nothing. It is refused, naming the field."""
    from accounts.services import AccountError, user_role_set

    boss = User.objects.create_superuser("boss", password=PASSWORD)
    with pytest.raises(AccountError, match="superuser"):
        user_role_set(user=boss, role="reviewer", actor=admin_user)
