"""Repository URLs cannot make the host's git connect to non-public addresses (blind SSRF),
and URLs carrying credentials are refused, naming the field."""

import socket
import threading

import pytest
from django.test import override_settings

from campaigns.services import campaign_spec_check, repositories_register
from campaigns.spec import CampaignSpecError
from review.publish import PublishError, change_push
from sandboxes.repos import RepoUrlError, mirror_fetch, repo_url_validate
from tests.factories import repos_make

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that counts connections: an SSRF target."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    seen, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join(timeout=5)
    server.close()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://127.0.0.1/r.git", "loopback"),
        ("https://localhost/r.git", "loopback"),
        ("https://2130706433/r.git", "loopback"),  # 127.0.0.1 as one decimal number
        ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("https://10.1.2.3/r.git", "private"),
        ("https://192.168.0.10/r.git", "private"),
        ("ssh://git@172.16.0.1/r.git", "private"),
        ("git@127.0.0.1:r.git", "loopback"),
        ("https://0.0.0.0/r.git", "unspecified"),
        ("https://100.64.0.1/r.git", "carrier-grade NAT"),
    ],
)
def test_non_public_repository_hosts_are_refused(url, says):
    with pytest.raises(RepoUrlError) as caught:
        repo_url_validate(url)
    assert says in caught.value.message
    assert "CONVOY_CODEHOST_ALLOW" in caught.value.message
    assert caught.value.field == "url"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2@github.com/acme/app.git",
        "https://ghp_abcdef0123456789@github.com/acme/app.git",
        "ssh://git:hunter2@github.com/acme/app.git",
    ],
)
def test_urls_with_credentials_are_refused_pointing_to_secrets(url):
    with pytest.raises(RepoUrlError) as caught:
        repo_url_validate(url)
    assert "credentials" in caught.value.message
    assert "secret" in caught.value.message
    assert caught.value.field == "url"


def test_a_spec_naming_an_internal_host_is_refused_beside_the_field(db):
    spec = (
        "name: ssrf\nbackend: bwrap\nrepos:\n  - https://169.254.169.254/latest.git\n"
        "steps:\n  - name: t\n    run: 'true'\n"
    )
    with pytest.raises(CampaignSpecError) as caught:
        campaign_spec_check(source=spec)
    (error,) = [e for e in caught.value.errors if e.path.startswith("repos")]
    assert error.path == "repos[0].url"
    assert "cloud metadata" in error.message


def test_the_host_never_connects_to_a_loopback_listener(db, listener, tmp_path):
    port, seen = listener
    url = f"https://127.0.0.1:{port}/r.git"
    with pytest.raises(RepoUrlError):
        repositories_register(entries=[{"url": url}], actor=None)
    with pytest.raises(RepoUrlError):
        mirror_fetch(url=url)
    with pytest.raises(PublishError, match="loopback"):
        change_push(
            remote_url=url, base_commit="", base_ref="main", patch=b"x", branch="b", message="m"
        )
    assert seen == []


def test_the_allowlist_admits_an_internal_code_host(db, listener):
    port, seen = listener
    url = f"https://127.0.0.1:{port}/r.git"
    with override_settings(CODEHOST_ALLOW=["127.0.0.0/8"]):
        assert repo_url_validate(url) == url
        with pytest.raises(Exception, match=r"fetch|clone|failed"):
            mirror_fetch(url=url)  # git connects (and fails the TLS handshake)
    assert seen, "git should have connected to the allowlisted host"
    with override_settings(CODEHOST_ALLOW=["localhost"]):
        assert repo_url_validate("https://localhost/r.git") == "https://localhost/r.git"


def test_local_repositories_under_the_repo_root_still_register(db):
    _tag, paths = repos_make(1)
    assert paths[0].exists()
    with pytest.raises(RepoUrlError, match="CONVOY_REPO_ROOTS"):
        repo_url_validate("file:///etc")
