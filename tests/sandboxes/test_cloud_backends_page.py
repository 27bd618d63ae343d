"""The Backends admin page: every configured backend with what it offers and enforces, whether
its credentials are set (never their values), and an audited "Test connection" that starts a
tiny sandbox, runs `echo ok` and tears it down. The clouds are their fake SDKs (FakeModal,
FakeE2B: no route to the providers from here)."""

import json

import e2b.exceptions
import pytest

from audit.models import AuditEvent
from sandboxes.models import Sandbox, SandboxState
from tests.sandboxes.fake_cloud import cloud_fake_installed, fake_running, sdk_story

pytestmark = pytest.mark.shapes("embedded", "production")

SECRET = "e2b_0123456789abcdef_live_key"


@pytest.fixture
def clouds(settings, monkeypatch):
    settings.SANDBOX_BACKENDS = ("bwrap", "modal", "e2b", "daytona", "process")
    settings.SANDBOX_BACKEND = "bwrap"
    settings.ALLOW_UNSAFE_PROCESS_BACKEND = False
    for name in ("E2B_API_KEY", "DAYTONA_API_KEY", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", "/nonexistent/modal.toml")
    monkeypatch.setenv("E2B_API_KEY", SECRET)


def _card(page: str, name: str) -> str:
    return page.split(f'id="backend-{name}"')[1].split("</section>")[0]


def _tested() -> list[dict]:
    return [
        {"outcome": e.outcome, **json.loads(e.body)["payload"]}
        for e in AuditEvent.objects.filter(action="sandbox.backend.tested").order_by("id")
    ]


def test_cloud_backends_page_shows_capabilities_and_whether_credentials_are_set(
    client, admin_user, clouds
):
    client.force_login(admin_user)
    page = client.get("/sandboxes/backends/").content.decode()

    assert [part.split('"')[0] for part in page.split('id="backend-')[1:]] == [
        "bwrap", "modal", "e2b", "daytona"
    ]  # fmt: skip
    assert 'id="backend-process"' not in page  # not allowed here
    e2b_card, daytona_card = _card(page, "e2b"), _card(page, "daytona")
    assert "Firecracker" in e2b_card and "filesystem snapshot" in e2b_card
    assert '<dd data-testid="gpu">no</dd>' in e2b_card
    assert "yes" in _card(page, "modal").split('data-testid="gpu">')[1][:10]
    assert ">configured<" in e2b_card and "<code>E2B_API_KEY</code>: set" in e2b_card
    assert (
        ">not configured<" in daytona_card
        and "<code>DAYTONA_API_KEY</code>: not set" in daytona_card
    )
    assert ">not configured<" in _card(page, "modal")
    assert "none needed" in _card(page, "bwrap")
    assert SECRET not in page
    assert page.count('data-testid="test-connection"') == 4


def test_cloud_backends_page_is_for_admins_only(client, manager, outsider, clouds):
    for user in (manager, outsider):
        client.force_login(user)
        assert client.get("/sandboxes/backends/").status_code == 403
        assert client.post("/sandboxes/backends/bwrap/test").status_code == 403
    assert not Sandbox.objects.exists()
    assert not _tested()


def test_cloud_backends_test_connection_runs_echo_ok_and_tears_down(
    client, admin_user, clouds, tmp_path, monkeypatch
):
    with cloud_fake_installed("modal", tmp_path / "modal", monkeypatch) as engine:
        client.force_login(admin_user)
        response = client.post(
            "/sandboxes/backends/modal/test",
            headers={"HX-Request": "true", "HX-Target": "backend-modal"},
        )
        page = response.content.decode()

        assert response.status_code == 200
        assert page.lstrip().startswith('<section class="card" id="backend-modal"')  # the partial
        assert 'data-testid="test-result"' in page and "OK in " in page
        assert "echo ok answered ok" in page
        story = sdk_story(engine)
        assert len(story["create"]) == 1 and story["create"] == story["teardown"]
        assert not fake_running(engine)
    [sandbox] = Sandbox.objects.all()
    assert (sandbox.backend, sandbox.state) == ("modal", SandboxState.TERMINATED)
    assert sandbox.on_behalf_of == admin_user
    [tested] = _tested()
    assert (tested["outcome"], tested["backend"]) == ("success", "modal")
    assert tested["duration_ms"] >= 0


def test_cloud_backends_failed_test_is_shown_and_audited_without_the_key(
    client, admin_user, clouds, tmp_path, monkeypatch
):
    with cloud_fake_installed("e2b", tmp_path / "e2b", monkeypatch) as engine:
        engine.fake.fail_next(
            "Sandbox.create", e2b.exceptions.AuthenticationException(f"invalid key {SECRET}")
        )
        client.force_login(admin_user)
        page = client.post("/sandboxes/backends/e2b/test").content.decode()

        assert "Failed in " in page and "E2B create refused: check E2B_API_KEY" in page
        assert SECRET not in page and "[redacted]" in page
        assert not fake_running(engine)
    [tested] = _tested()
    assert tested["outcome"] == "failure"
    assert SECRET not in json.dumps(tested) and SECRET not in AuditEvent.objects.last().body


def test_cloud_backends_test_of_an_unconfigured_backend_is_not_found(client, admin_user, clouds):
    client.force_login(admin_user)
    assert client.post("/sandboxes/backends/gvisor/test").status_code == 404
    assert client.post("/sandboxes/backends/process/test").status_code == 404
    assert client.get("/sandboxes/backends/bwrap/test").status_code == 405
    assert not Sandbox.objects.exists()
