"""Sandbox pages: who sees which sandbox, the unsafe marking, and terminating from the page."""

import pytest
from django.test import override_settings

from audit.models import AuditEvent
from sandboxes.backends.base import SandboxSpec
from sandboxes.models import SandboxState
from sandboxes.services import sandbox_create, sandbox_exec, sandbox_read_file
from tests.support import events_refused

pytestmark = pytest.mark.shapes("embedded", "production")
SPEC = SandboxSpec(timeout_s=300)


@pytest.fixture
def sandbox(db, manager, engines_clean):
    sandbox = sandbox_create(spec=SPEC, backend="bwrap", on_behalf_of=manager)
    sandbox_exec(sandbox=sandbox, argv=["sh", "-c", "echo '<b>not bold</b>'; exit 2"])
    return sandbox


def test_admins_list_sandboxes_and_see_unsafe_ones_marked(client, admin_user, sandbox):
    with override_settings(ALLOW_UNSAFE_PROCESS_BACKEND=True):
        unsafe = sandbox_create(spec=SPEC, backend="process")
    client.force_login(admin_user)
    page = client.get("/sandboxes/").content.decode()
    assert f'href="/sandboxes/{sandbox.pk}/"' in page
    assert page.count("UNSAFE: process backend") == 1
    detail = client.get(f"/sandboxes/{unsafe.pk}/").content.decode()
    assert "UNSAFE: process backend" in detail


def test_detail_shows_commands_escaped_and_says_what_the_sandbox_runs(client, manager, sandbox):
    client.force_login(manager)  # the person it runs for
    page = client.get(f"/sandboxes/{sandbox.pk}/").content.decode()
    assert "echo &#x27;&lt;b&gt;not bold&lt;/b&gt;&#x27;; exit 2" in page
    assert "<b>not bold</b>" not in page.split('data-testid="commands"')[1].split("</table>")[0]
    assert "The host's system directories, read-only" in page
    assert "UNSAFE" not in page
    assert 'data-testid="log-panel"' in page


def test_outsiders_cannot_see_sandboxes(client, outsider, reviewer, sandbox):
    client.force_login(outsider)
    assert client.get("/sandboxes/").status_code == 403
    assert client.get(f"/sandboxes/{sandbox.pk}/").status_code == 404
    assert AuditEvent.objects.filter(action="people.permission.denied").count() == 1
    client.force_login(reviewer)  # not a campaign sandbox, not theirs
    assert client.get(f"/sandboxes/{sandbox.pk}/").status_code == 404


def test_terminating_from_the_page_is_recorded_with_who_did_it(
    client, admin_user, reviewer, sandbox
):
    campaign_box = sandbox_create(spec=SPEC, backend="bwrap", campaign_id=5)
    client.force_login(reviewer)  # may read campaign sandboxes, not stop them
    assert client.post(f"/sandboxes/{campaign_box.pk}/terminate").status_code == 403
    client.force_login(admin_user)
    response = client.post(f"/sandboxes/{sandbox.pk}/terminate", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert 'data-testid="state">terminated' in response.content.decode()
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.TERMINATED and sandbox.terminated_by == admin_user
    event = AuditEvent.objects.get(action="sandbox.sandbox.terminated", sandbox_id=sandbox.pk)
    assert (event.actor_display, event.actor_type) == ("ada", "human")


def test_a_termination_the_trail_cannot_record_is_refused_and_the_sandbox_runs_on(
    transactional_db, client, admin_user, sandbox
):
    """The engine stopped the sandbox before its event was written: a failed write left a
    person's termination done and unrecorded. (Committed data: as a server runs, the request
    is not inside a test's transaction.)"""
    client.force_login(admin_user)
    with events_refused("sandbox."):
        response = client.post(f"/sandboxes/{sandbox.pk}/terminate")
    assert response.status_code == 503
    assert "nothing was changed" in response.content.decode()
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.RUNNING
    sandbox_exec(sandbox=sandbox, argv=["sh", "-c", "echo still here > alive.txt"])
    assert sandbox_read_file(sandbox=sandbox, path="alive.txt") == b"still here\n"
    assert not AuditEvent.objects.filter(action__startswith="sandbox.termin").exists()
