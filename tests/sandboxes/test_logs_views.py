"""The raw log download and the panel's first render."""

import pytest
from django.template.loader import render_to_string

from sandboxes.logs import LogCapture
from sandboxes.models import Sandbox
from tests.factories import PASSWORD

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def sandbox(db):
    sandbox = Sandbox.objects.create(backend="bwrap")
    with LogCapture(sandbox_id=sandbox.pk, argv=["make", "test"]) as capture:
        capture.feed("stdout", b"\x1b[32mok\x1b[0m <tests>\n")
        capture.feed("stderr", b"warning: tab\there\n")
    return sandbox


def test_raw_log_downloads_as_plain_text_exactly_as_stored(client, admin_user, sandbox):
    client.login(username=admin_user.username, password=PASSWORD)
    response = client.get(f"/sandboxes/{sandbox.pk}/log.txt")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    assert body == "$ make test\n\x1b[32mok\x1b[0m <tests>\nwarning: tab\there\n"


def test_raw_log_is_not_found_for_outsiders(client, outsider, sandbox):
    client.login(username=outsider.username, password=PASSWORD)
    assert client.get(f"/sandboxes/{sandbox.pk}/log.txt").status_code == 404
    client.logout()
    assert client.get(f"/sandboxes/{sandbox.pk}/log.txt").status_code == 302  # to the login page


def test_panel_shows_stored_lines_escaped_and_resumes_the_socket_after_them(sandbox):
    page = render_to_string("sandboxes/log_panel.html", {"sandbox": sandbox})
    assert f'ws-connect="/ws/sandboxes/{sandbox.pk}/logs/?after=3&amp;ack=1"' in page
    assert "&lt;tests&gt;" in page and "<tests>" not in page
    assert 'class="log-line log-stderr" data-seq="3"' in page
    assert f"/sandboxes/{sandbox.pk}/log.txt" in page
