"""Two creates of the same thing at the same moment: one wins, the other is a 4xx naming the
field (not an IntegrityError's 500), and the trail records only what was written. PostgreSQL
only: SQLite lets one writer in at a time, so the race needs two."""

import contextlib
import json
import threading
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import Campaign, Repository, Secret
from tests.factories import repos_make, spec_for, user_make

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite lets one writer at a time in: the race needs two")


def _together(monkeypatch, module, name: str) -> None:
    """Make `module.name` return only when the other thread has called it too (each waits up
    to 2 s): both requests pass their checks before either writes."""
    both = threading.Barrier(2, timeout=2)
    original = getattr(module, name)

    def waits(*args, **kwargs):
        result = original(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            both.wait()
        return result

    monkeypatch.setattr(module, name, waits)


def _twice(path: str, body: dict, user) -> list:
    """POST `body` to `path` from two threads at once; each answer's (status, body), or the
    exception a request raised."""
    _token, raw = token_create(user=user, name="race", scope="write")
    results: list = [None, None]

    def post(i: int) -> None:
        try:
            response = Client().post(
                path,
                json.dumps(body),
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {raw}",
            )
            results[i] = (response.status_code, response.json())
        except Exception as exc:  # the server error is what is tested
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_two_campaigns_with_one_name_at_once_one_is_422_naming_name(monkeypatch):
    from campaigns import services

    manager = user_make(role="manager", username="mia")
    tag, _ = repos_make(1)
    _together(monkeypatch, services, "spec_db_check")
    results = _twice("/api/v1/campaigns", {"yaml": spec_for(tag, name="same")}, manager)
    statuses = sorted(r[0] if isinstance(r, tuple) else repr(r) for r in results)
    assert statuses == [201, 422], results
    (refused,) = [r[1] for r in results if r[0] == 422]
    assert refused["errors"][0]["field"] == "name"
    assert Campaign.objects.filter(name="same").count() == 1
    assert AuditEvent.objects.filter(action="campaign.campaign.created").count() == 1


def test_two_secrets_with_one_name_at_once_no_server_error(monkeypatch):
    from campaigns import secrets

    admin = user_make(role="admin", username="ada")
    _together(monkeypatch, secrets, "_fernet")
    results = _twice("/api/v1/secrets", {"name": "TOKEN", "value": "v"}, admin)
    assert all(isinstance(r, tuple) for r in results), results
    statuses = sorted(r[0] for r in results)
    # Stored and refused (409 naming the name), or stored and then rotated: never a 500.
    assert statuses in ([201, 201], [201, 409]), results
    if statuses == [201, 409]:
        (refused,) = [r[1] for r in results if r[0] == 409]
        assert refused["errors"][0]["field"] == "name"
    assert Secret.objects.filter(name="TOKEN").count() == 1
    events = AuditEvent.objects.filter(action__startswith="secret.secret.").count()
    assert events == statuses.count(201)


def test_two_registrations_of_one_url_at_once_record_it_once(monkeypatch, settings):
    """Both saw the URL unknown, both inserted (one skipped by ON CONFLICT), both recorded
    `campaign.repository.registered` for it."""
    from campaigns import services
    from campaigns.demo import demo_repos_create

    manager = user_make(role="manager", username="mia")
    (repo,) = demo_repos_create(Path(settings.REPO_ROOTS[0]) / uuid.uuid4().hex[:8], 1)
    _together(monkeypatch, services, "_tags_claim")
    results = _twice("/api/v1/repositories", {"url": f"file://{repo}"}, manager)
    assert [r[0] if isinstance(r, tuple) else r for r in results] == [201, 201], results
    assert Repository.objects.filter(url=f"file://{repo}").count() == 1
    events = AuditEvent.objects.filter(action="campaign.repository.registered")
    assert [json.loads(e.body)["payload"]["urls"] for e in events] == [[f"file://{repo}"]]
