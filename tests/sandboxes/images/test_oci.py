"""What a registry may make the worker do (audit findings): connect nowhere but vetted addresses
whatever it answers (a token realm, a redirect), show none of its answer's text, and receive no
login of the worker's own; and what the base step's mmdebstrap sees of the worker."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import ConvoyError
from sandboxes.images import build
from sandboxes.images.oci import OciError, oci_digest, oci_pull
from sandboxes.images.services import image_resolve
from sandboxes.images.spec import ImageSpec
from tests.security.test_ssrf import listener  # noqa: F401 (a fixture)

pytestmark = pytest.mark.shapes("embedded", "production")

SECRET_BODY = "INTERNAL-ONLY-BODY metadata-token=abc123"


class _FakeRegistry(http.server.BaseHTTPRequestHandler):
    """Answers every request as `mode` says; records each request's path and Authorization."""

    mode = ""
    target = ""  # where a realm or a redirect points
    seen: list[tuple[str, str]] = []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        if self.mode == "realm":
            self.send_response(401)
            realm = f'Bearer realm="{self.target}/token",service="registry",scope="x"'
            self.send_header("WWW-Authenticate", realm)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.mode == "redirect":
            self.send_response(307)
            self.send_header("Location", f"{self.target}/v2/team/x/manifests/1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.mode == "basic":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="registry"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v2/" and self.mode == "forbidden":
            self._answer(200, b"{}")
        elif self.path.startswith("/v2/") and self.mode == "token-forbidden":
            self.send_response(401)
            realm = f'Bearer realm="http://{self.address}/token",service="registry"'
            self.send_header("WWW-Authenticate", realm)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:  # a 403 with a body a client could show
            errors = {"errors": [{"code": "DENIED", "message": SECRET_BODY}]}
            self._answer(403, json.dumps(errors).encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_registry(settings, monkeypatch) -> Iterator[type[_FakeRegistry]]:
    """A registry on 127.0.0.1 that CONVOY_LOCAL_REGISTRIES lists, as an operator lists theirs."""
    _FakeRegistry.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeRegistry)
    _FakeRegistry.address = f"127.0.0.1:{server.server_address[1]}"
    settings.LOCAL_REGISTRIES = [*settings.LOCAL_REGISTRIES, _FakeRegistry.address]
    monkeypatch.setenv("CONVOY_LOCAL_REGISTRIES", ",".join(settings.LOCAL_REGISTRIES))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _FakeRegistry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _resolve_refused(registry) -> ConvoyError:
    spec = ImageSpec(kind="oci", oci=f"{registry.address}/team/x:1")
    with pytest.raises(ConvoyError) as refused:
        image_resolve(spec=spec, creds="robot:registry-pass")
    return refused.value


@pytest.mark.parametrize("mode", ["realm", "redirect"])
def test_a_registry_cannot_send_the_worker_to_another_loopback_port(
    fake_registry,
    listener,  # noqa: F811
    mode,
):
    """skopeo checked only the registry's host, then followed a token realm or a redirect the
    registry sent to any address: `http://127.0.0.1:<unlisted port>/` was reached, carrying
    the registry's login. Every connection is now vetted: the listener sees none, and the
    manager reads a fixed text naming the registry."""
    port, seen = listener
    fake_registry.mode, fake_registry.target = mode, f"http://127.0.0.1:{port}"
    refused = _resolve_refused(fake_registry)
    assert fake_registry.seen  # the registry itself was asked
    assert seen == []
    assert refused.field == "image.oci" and fake_registry.address in refused.message
    assert str(port) not in refused.message.replace(fake_registry.address, "")


@pytest.mark.parametrize("mode", ["forbidden", "token-forbidden"])
def test_a_registrys_answer_never_reaches_the_error(fake_registry, mode):
    """skopeo's error carried what the server answered (an internal service's 403 body, a
    metadata token), and the manager read it. The error is now a fixed text: the status, the
    registry, the field."""
    fake_registry.mode = mode
    refused = _resolve_refused(fake_registry)
    assert "INTERNAL-ONLY-BODY" not in refused.message and "abc123" not in refused.message
    assert "403" in refused.message and fake_registry.address in refused.message
    assert refused.field == "image.oci"


def test_the_workers_own_registry_logins_are_never_used(fake_registry, tmp_path, monkeypatch):
    """skopeo ran with the worker's environment and read `$HOME/.docker/config.json`: a campaign
    with no `credentials_secret` pulled with the operator's login. The registry sees none."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    login = base64.b64encode(b"operator:operator-pass").decode()
    config = {"auths": {fake_registry.address: {"auth": login}}}
    (home / ".docker" / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HOME", str(home))
    fake_registry.mode = "basic"
    spec = ImageSpec(kind="oci", oci=f"{fake_registry.address}/team/x:1")
    with pytest.raises(ConvoyError):
        image_resolve(spec=spec)
    assert fake_registry.seen
    assert [auth for _, auth in fake_registry.seen if auth] == []


def test_umoci_runs_without_the_workers_environment(oci_registry, tmp_path, monkeypatch):
    """umoci ran with the worker's environment (its HOME, its logins, its tokens)."""
    ref = oci_registry.push_tiny("team/env:1", {"/a.txt": "x"})
    monkeypatch.setenv("CONVOY_GITHUB_TOKEN", "ghp-canary")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    runs = []

    def run(argv, *, env=None):
        runs.append((argv, env))
        return 1

    with pytest.raises(OciError):
        oci_pull(ImageSpec(kind="oci", oci=ref), workdir=tmp_path / "work",
                 rootfs=tmp_path / "rootfs", run=run, line=print, arch="amd64")  # fmt: skip
    ((argv, env),) = runs
    assert argv[0] == "umoci" and env is not None
    assert not {"CONVOY_GITHUB_TOKEN", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE"} & set(env)
    assert env["HOME"] != str(Path.home()) and env["XDG_RUNTIME_DIR"] == env["HOME"]


class _Recorded:
    """A BuildLog that records what it would run and says it failed."""

    def __init__(self) -> None:
        self.runs: list[tuple[list[str], dict | None]] = []
        self.tail: list[str] = []

    def run(self, argv, *, env=None, pass_fds=()):
        self.runs.append((argv, env))
        return 1

    def line(self, text: str) -> None:
        self.tail.append(text)


def test_mmdebstrap_gets_a_minimal_environment(tmp_path, monkeypatch):
    """mmdebstrap had the worker's whole environment and passes it on to the packages'
    maintainer scripts, run as root: a script could read CONVOY_GITHUB_TOKEN. It now gets
    HOST_ENV, the host's proxy and CA variables and a HOME of its own."""
    monkeypatch.setenv("CONVOY_GITHUB_TOKEN", "ghp-canary")
    monkeypatch.setenv("DATABASE_URL", "postgres://convoy:db-pass@db/convoy")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    log = _Recorded()
    (tmp_path / "work").mkdir()
    with pytest.raises(build.ImageBuildError):
        build._base(ImageSpec(kind="debian", base="bookworm"), tmp_path / "work/rootfs",
                    tmp_path / "work", log, None)  # fmt: skip
    ((argv, env),) = log.runs
    assert argv[0] == "mmdebstrap" and env is not None
    assert "ghp-canary" not in json.dumps(env) and "db-pass" not in json.dumps(env)
    assert env["PATH"] == build.HOST_ENV["PATH"]
    assert env["https_proxy"] == "http://proxy.invalid:3128"
    assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"
    assert env["HOME"] != str(Path.home())
    assert not (tmp_path / "work/base-home").exists()  # removed after the step


class _TokenRegistry(http.server.BaseHTTPRequestHandler):
    """A registry as public ones are: a Bearer token from its realm for the login, blobs sent
    on by a redirect, a Docker manifest. Serves one image: `manifest` and `blobs`."""

    address = ""
    blobs: dict[str, bytes] = {}
    manifest = b""

    def do_GET(self):
        bearer = self.headers.get("Authorization") == "Bearer t0ken"
        if self.path.startswith("/token?"):
            login = "Basic " + base64.b64encode(b"robot:registry-pass").decode()
            if self.headers.get("Authorization") != login:
                return self._answer(401, b"")
            return self._answer(200, b'{"token": "t0ken"}')
        if self.path.startswith("/store/"):
            return self._answer(200, self.blobs["sha256:" + self.path.rsplit("/", 1)[1]])
        if not bearer:
            self.send_response(401)
            challenge = f'Bearer realm="http://{self.address}/token",service="fake"'
            self.send_header("WWW-Authenticate", challenge)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if self.path == "/v2/team/x/manifests/1":
            kind = "application/vnd.docker.distribution.manifest.v2+json"
            return self._answer(200, self.manifest, kind)
        if self.path.startswith("/v2/team/x/blobs/sha256:"):
            self.send_response(307)
            self.send_header("Location", "/store/" + self.path.rsplit(":", 1)[1])
            self.send_header("Content-Length", "0")
            return self.end_headers()
        return self._answer(404, b"")

    def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_registry_with_token_auth_and_redirected_blobs_is_pulled(tmp_path, settings, monkeypatch):
    """What the checks must not stop: a login exchanged at the registry's own realm, blobs
    redirected within it, a Docker manifest (unpacked as OCI by umoci)."""
    layout = tmp_path / "layout"
    (tmp_path / "hello.txt").write_text("hello through a token")
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:img"], check=True)
    subprocess.run(["umoci", "insert", "--image", f"{layout}:img", str(tmp_path / "hello.txt"),
                    "/hello.txt"], check=True)  # fmt: skip
    blobs = {"sha256:" + p.name: p.read_bytes() for p in (layout / "blobs/sha256").iterdir()}
    top = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads(blobs[top])
    manifest["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    manifest["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for layer in manifest["layers"]:
        layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    _TokenRegistry.blobs, _TokenRegistry.manifest = blobs, json.dumps(manifest).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenRegistry)
    _TokenRegistry.address = f"127.0.0.1:{server.server_address[1]}"
    settings.LOCAL_REGISTRIES = [_TokenRegistry.address]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    spec = ImageSpec(kind="oci", oci=f"{_TokenRegistry.address}/team/x:1")
    try:
        digest = oci_digest(spec, creds="robot:registry-pass")
        (tmp_path / "work").mkdir()
        config = oci_pull(spec, workdir=tmp_path / "work", rootfs=tmp_path / "rootfs",
                          run=lambda argv, env: subprocess.run(argv, env=env).returncode,
                          line=print, arch="amd64", creds="robot:registry-pass")  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert digest == "sha256:" + hashlib.sha256(_TokenRegistry.manifest).hexdigest()
    assert (tmp_path / "rootfs/hello.txt").read_text() == "hello through a token"
    assert config["cwd"] == "/"
