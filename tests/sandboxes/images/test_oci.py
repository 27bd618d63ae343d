"""What a registry may make the worker do (audit findings): connect nowhere but vetted addresses
whatever it answers (a token realm, a redirect), show none of its answer's text, and receive no
login of the worker's own; and what the base step's mmdebstrap sees of the worker."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import ConvoyError
from sandboxes.images import build, oci
from sandboxes.images.oci import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, OciError, oci_digest, oci_pull
from sandboxes.images.services import image_resolve
from sandboxes.images.spec import ImageSpec
from tests.security.test_ssrf import listener  # noqa: F401 (a fixture)
from tests.support import cert_make

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


@contextlib.contextmanager
def _served(handler, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """`handler` serving on a free port of `host` until the block ends; its `host:port`."""
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _listed(address: str, settings, monkeypatch) -> None:
    """List `address` in CONVOY_LOCAL_REGISTRIES, as an operator lists their registry."""
    settings.LOCAL_REGISTRIES = [*settings.LOCAL_REGISTRIES, address]
    monkeypatch.setenv("CONVOY_LOCAL_REGISTRIES", ",".join(settings.LOCAL_REGISTRIES))


@pytest.fixture
def fake_registry(settings, monkeypatch) -> Iterator[type[_FakeRegistry]]:
    """A registry on 127.0.0.1 that CONVOY_LOCAL_REGISTRIES lists, as an operator lists theirs."""
    _FakeRegistry.seen = []
    with _served(_FakeRegistry) as address:
        _FakeRegistry.address = address
        _listed(address, settings, monkeypatch)
        yield _FakeRegistry


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

    spec = ImageSpec(kind="oci", oci=ref)
    with pytest.raises(OciError):
        oci_pull(spec, workdir=tmp_path / "work", rootfs=tmp_path / "rootfs", run=run,
                 line=print, arch="amd64", digest=oci_digest(spec))  # fmt: skip
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


def mmdebstrap_recorded(tmp_path: Path) -> tuple[list[str], dict | None]:
    """The command and environment a Debian base step runs mmdebstrap with (not run)."""
    log = _Recorded()
    (tmp_path / "work").mkdir()
    with pytest.raises(build.ImageBuildError):
        build._base(ImageSpec(kind="debian", base="bookworm"), tmp_path / "work/rootfs",
                    tmp_path / "work", log, None, {})  # fmt: skip
    ((argv, env),) = log.runs
    return argv, env


def test_mmdebstrap_gets_a_minimal_environment(tmp_path, monkeypatch):
    """mmdebstrap had the worker's whole environment and passes it on to the packages'
    maintainer scripts, run as root: a script could read CONVOY_GITHUB_TOKEN. It now gets
    HOST_ENV, the host's proxy and CA variables and a HOME of its own."""
    monkeypatch.setenv("CONVOY_GITHUB_TOKEN", "ghp-canary")
    monkeypatch.setenv("DATABASE_URL", "postgres://convoy:db-pass@db/convoy")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    argv, env = mmdebstrap_recorded(tmp_path)
    assert argv[len(build.MMDEBSTRAP_NAMESPACE)] == "mmdebstrap" and env is not None
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
        digest = "sha256:" + hashlib.sha256(self.manifest).hexdigest()
        if self.path in ("/v2/team/x/manifests/1", f"/v2/team/x/manifests/{digest}"):
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
                          line=print, arch="amd64", digest=digest,
                          creds="robot:registry-pass")  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert digest == "sha256:" + hashlib.sha256(_TokenRegistry.manifest).hexdigest()
    assert (tmp_path / "rootfs/hello.txt").read_text() == "hello through a token"
    assert config["cwd"] == "/"


class _Manifests(http.server.BaseHTTPRequestHandler):
    """A registry serving `served` (path: body, Content-Type) and 404 elsewhere; records the
    path of each request."""

    address = ""
    served: dict[str, tuple[bytes, str]] = {}
    seen: list[str] = []

    @classmethod
    def serve(cls, body: dict | bytes, kind: str = OCI_MANIFEST, what: str = "manifests") -> str:
        """Serve `body` under its digest; the digest."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        cls.served[f"/v2/team/x/{what}/{digest}"] = (raw, kind)
        return digest

    def do_GET(self):
        self.seen.append(self.path)
        body, kind = self.served.get(self.path, (b"", "application/json"))
        self.send_response(200 if self.path in self.served else 404)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def manifests(settings, monkeypatch) -> Iterator[type[_Manifests]]:
    _Manifests.served, _Manifests.seen = {}, []
    with _served(_Manifests) as address:
        _Manifests.address = address
        _listed(address, settings, monkeypatch)
        yield _Manifests


def _pull(tmp_path: Path, spec: ImageSpec, digest: str, lines: list[str]) -> dict:
    return oci_pull(spec, workdir=tmp_path / "work", rootfs=tmp_path / "rootfs",
                    run=lambda argv, env: 1, line=lines.append, arch="amd64",
                    digest=digest)  # fmt: skip


_A_CONFIG = {"mediaType": OCI_CONFIG, "digest": "sha256:" + "0" * 64, "size": 2}
_A_MANIFEST = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [], "config": _A_CONFIG}


@pytest.mark.parametrize("named", ["movable", "../../../v2/other/secret?x=" + "y" * 3000])
def test_an_index_names_its_images_by_digest_only(manifests, tmp_path, named):
    """An index (pinned by digest) named its image by whatever it put in `digest`: a tag, whose
    content was fetched unverified, or a path (`../../../v2/other/secret?x=…`) that went into
    the request and a 3 kB build log line. Only a sha256 digest is followed, then verified."""
    manifests.served["/v2/team/x/manifests/movable"] = (json.dumps(_A_MANIFEST).encode(),
                                                        OCI_MANIFEST)  # fmt: skip
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": named, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}}]}  # fmt: skip
    digest = manifests.serve(index, OCI_INDEX)
    spec = ImageSpec(kind="oci", oci=f"{manifests.address}/team/x@{digest}")
    lines: list[str] = []
    with pytest.raises(OciError) as refused:
        _pull(tmp_path, spec, digest, lines)
    assert manifests.seen == [f"/v2/team/x/manifests/{digest}"]
    assert named not in str(refused.value) and not any(named in line for line in lines)


_CONFIG = b"{}"
_CONFIG_DIGEST = "sha256:" + hashlib.sha256(_CONFIG).hexdigest()
_SECRET = "SECRET-" + "z" * 57


def _manifest(config: object = None, layers: object = (), media: object = OCI_MANIFEST) -> dict:
    config = {"mediaType": OCI_CONFIG, "digest": _CONFIG_DIGEST} if config is None else config
    return {"schemaVersion": 2, "mediaType": media, "config": config,
            "layers": list(layers) if isinstance(layers, tuple) else layers}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (_manifest(media=f"application/{_SECRET}"), OCI_MANIFEST),  # the manifest's type
        ({"schemaVersion": 2, "layers": []}, f"application/{_SECRET}"),  # Content-Type's
        (_manifest(layers=({"mediaType": _SECRET, "digest": _CONFIG_DIGEST},)), OCI_MANIFEST),
        (_manifest(config={"mediaType": OCI_CONFIG, "digest": f"sha256:{_SECRET}"}), OCI_MANIFEST),
        (_manifest(config={"mediaType": [], "digest": _CONFIG_DIGEST}), OCI_MANIFEST),
        (_manifest(config={"mediaType": {}, "digest": _CONFIG_DIGEST}), OCI_MANIFEST),
        (_manifest(config=[]), OCI_MANIFEST),
        (_manifest(layers={"a": 1}), OCI_MANIFEST),
        (_manifest(layers=(_SECRET,)), OCI_MANIFEST),
        (_manifest(layers=({"mediaType": OCI_CONFIG, "digest": 7},)), OCI_MANIFEST),
        ({"mediaType": OCI_INDEX, "manifests": {_SECRET: 1}}, OCI_INDEX),
        ({"mediaType": OCI_INDEX, "manifests": [_SECRET]}, OCI_INDEX),
        ({"mediaType": OCI_INDEX, "manifests": [{"platform": _SECRET}]}, OCI_INDEX),
        ({"mediaType": ["x"]}, OCI_MANIFEST),
        ([_SECRET], OCI_MANIFEST),
    ],
)
def test_a_malformed_or_foreign_manifest_fails_with_a_fixed_text(manifests, tmp_path, body, kind):
    """A manifest's media type (its own, or the Content-Type's) and a bad digest were quoted in
    the error, and malformed manifests (`"manifests": {…}`, `"config": {"mediaType": []}`)
    raised AttributeError or TypeError. Each is an OciError whose text quotes the registry's
    nothing."""
    manifests.serve(_CONFIG, "application/octet-stream", what="blobs")
    raw = json.dumps(body).encode()
    digest = manifests.serve(raw, kind)
    spec = ImageSpec(kind="oci", oci=f"{manifests.address}/team/x@{digest}")
    with pytest.raises(OciError) as refused:
        _pull(tmp_path, spec, digest, [])
    assert "SECRET" not in str(refused.value) and "zzzz" not in str(refused.value)


class _Redirecting(http.server.BaseHTTPRequestHandler):
    """The registry: every request is sent on to `target` (another allowed host)."""

    target = ""
    seen: list[tuple[str, str]] = []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(307)
        self.send_header("Location", f"https://{self.target}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class _Elsewhere(http.server.BaseHTTPRequestHandler):
    """Where the redirect leads: a 401 naming its own realm, and a token for any login."""

    address = ""
    seen: list[tuple[str, str]] = []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path.startswith("/token"):
            self.send_response(200)
            body = b'{"token": "elsewhere"}'
        else:
            self.send_response(401)
            challenge = f'Bearer realm="https://{self.address}/token",service="elsewhere"'
            self.send_header("WWW-Authenticate", challenge)
            body = b""
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_challenge_from_where_a_redirect_led_gets_no_login(tmp_path, settings, monkeypatch):
    """The registry redirected to another (allowed) host, which answered 401 naming its own
    realm: Convoy answered that challenge, sending the registry's login to that realm. Only
    a challenge on the registry's own origin is answered; the other host sees no login."""
    cert, key = cert_make(tmp_path, ["127.0.0.2", "127.0.0.3"])
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    settings.CODEHOST_ALLOW = ["127.0.0.0/8"]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    _Redirecting.seen, _Elsewhere.seen = [], []
    with (
        _served(_Elsewhere, "127.0.0.3", tls) as elsewhere,
        _served(_Redirecting, "127.0.0.2", tls) as registry,
    ):
        _Elsewhere.address = _Redirecting.target = elsewhere
        spec = ImageSpec(kind="oci", oci=f"{registry}/team/x:1")
        with pytest.raises(OciError) as refused:
            oci_digest(spec, creds="robot:registry-pass")
    assert _Redirecting.seen and _Elsewhere.seen  # the redirect was followed
    assert [auth for _, auth in _Elsewhere.seen if auth] == []
    assert not any(path.startswith("/token") for path, _ in _Elsewhere.seen)
    assert "401" in str(refused.value) and elsewhere not in str(refused.value)


class _Dribbling(http.server.BaseHTTPRequestHandler):
    """Sends a status line, then a header byte every 50 ms (for ten seconds at most)."""

    stop = threading.Event()

    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(200):
            if self.stop.wait(0.05):
                return
            try:
                self.wfile.write(b"a")
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args):
        pass


def test_a_registry_dribbling_its_headers_is_held_to_the_pulls_deadline(settings, monkeypatch):
    """Only the blob loop checked the pull's deadline: headers, a token's body and the proxy's
    tunnel each had a 60 s socket timeout per receive, so a registry sending a byte at a time
    outlasted PULL_TIMEOUT_S. Every receive now waits at most until the deadline."""
    monkeypatch.setattr(oci, "PULL_TIMEOUT_S", 1.0)
    _Dribbling.stop = threading.Event()
    with _served(_Dribbling) as address:
        _listed(address, settings, monkeypatch)
        started = time.monotonic()
        try:
            with pytest.raises(OciError):
                oci_digest(ImageSpec(kind="oci", oci=f"{address}/team/x:1"))
        finally:
            _Dribbling.stop.set()
        assert time.monotonic() - started < 4.0


def test_a_registry_dribbling_its_tls_handshake_is_held_to_the_pulls_deadline(
    tmp_path, settings, monkeypatch
):
    """The TLS handshake had TIMEOUT_S (60 s) of its own: a registry sending its handshake a
    byte at a time outlasted PULL_TIMEOUT_S. It now gets what is left until the deadline
    (Python holds a handshake to its socket's timeout as a whole)."""
    cert, key = cert_make(tmp_path, ["127.0.0.2"])
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    settings.CODEHOST_ALLOW = ["127.0.0.0/8"]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(oci, "PULL_TIMEOUT_S", 1.0)
    stop = threading.Event()
    relay = socket.create_server(("127.0.0.2", 0))

    def forward(source: socket.socket, sink: socket.socket, size: int) -> None:
        """Copy `source` to `sink`, `size` bytes at a time, one each 50 ms when `size` is 1."""
        with contextlib.suppress(OSError):
            while not stop.is_set() and (data := source.recv(size)):
                sink.sendall(data)
                if size == 1 and stop.wait(0.05):
                    break

    def serve(upstream: str) -> None:
        with contextlib.suppress(OSError):
            client, _ = relay.accept()
            host, port = upstream.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            threading.Thread(target=forward, args=(client, server, 65536), daemon=True).start()
            forward(server, client, 1)
            client.close()
            server.close()

    with _served(_Elsewhere, "127.0.0.2", tls) as upstream:
        thread = threading.Thread(target=serve, args=(upstream,), daemon=True)
        thread.start()
        spec = ImageSpec(kind="oci", oci=f"127.0.0.2:{relay.getsockname()[1]}/team/x:1")
        started = time.monotonic()
        try:
            with pytest.raises(OciError):
                oci_digest(spec)
        finally:
            stop.set()
            relay.close()
            thread.join(timeout=10)
        assert time.monotonic() - started < 4.0
