"""Pulling an OCI image from a registry into a root filesystem (Convoy's own client, then umoci).

Convoy talks to the registry itself, not through skopeo: skopeo resolved the host again and
followed whatever the registry sent (a redirect, a token realm `http://127.0.0.1:<port>/`),
so a registry a manager named made the worker reach this machine's and the private network's
services, with the registry's login, and showed their answers. Here every connection, the
registry's, a redirect's and a token realm's alike, goes to addresses vetted when it is made
(public, or allowed by CONVOY_CODEHOST_ALLOW) and to no other; a registry on this machine
(plain HTTP, only the ones `CONVOY_LOCAL_REGISTRIES` lists) is the one loopback `host:port` it
may reach. A registry's answer never reaches an error message: a fixed text names the status.
Credentials are a `user:password` string the caller resolved from a stored secret (this module
never sees secret names), and no login file of the worker's (~/.docker/config.json) is read.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from django.conf import settings

from core.git import ENV_KEPT
from sandboxes.egress.packages import CA_VARIABLES
from sandboxes.egress.wire import UpstreamConfig
from sandboxes.images.spec import ImageSpec
from sandboxes.repos import RepoUrlError, host_addresses_vet

TIMEOUT_S = 60.0
# A whole pull (or digest look-up) still going after this fails: a registry sending a byte a
# minute would otherwise hold the image's build claim forever (as COMMAND_TIMEOUT_S, build.py).
PULL_TIMEOUT_S = 3600.0
REDIRECTS_MAX = 5
MANIFEST_MAX = 4 * 1024 * 1024
TOKEN_MAX = 1024 * 1024
CHUNK = 1024 * 1024

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
# A Docker image's media types as the OCI layout umoci reads names them (the blobs are the same).
_DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    "application/vnd.docker.container.image.v1+json": OCI_CONFIG,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": (
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ),
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
}
_LAYERS = frozenset(
    ("application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
     "application/vnd.oci.image.layer.v1.tar+zstd")
)  # fmt: skip
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
# Debian's architecture names as OCI platforms name them.
_ARCH = {"i386": "386", "armhf": "arm", "armel": "arm", "ppc64el": "ppc64le"}
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class OciError(Exception):
    def __init__(self, message: str, *, not_found: bool = False, refused: bool = False):
        super().__init__(message)
        self.not_found = not_found
        self.refused = refused  # a registry Convoy does not connect to: the spec's problem


def oci_tool_env(home: str | Path) -> dict[str, str]:
    """The environment of umoci (and any registry tool): how to find programs, the locale, the
    host's proxy and CA variables, and a HOME of its own: never the worker's logins
    (~/.docker/config.json, REGISTRY_AUTH_FILE, DOCKER_CONFIG) or secrets."""
    keep = ENV_KEPT | set(CA_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home), XDG_CONFIG_HOME=str(home))
    return env


def _registry_vet(spec: ImageSpec) -> None:
    """The registry must be this machine's own (a local registry, plain HTTP) or a host whose
    addresses Convoy may connect to, as a repository's: a manager's `image.oci` made the host
    send requests to any address of the private network and showed the answer's text."""
    refusal = spec.oci_local_refusal()
    if refusal:  # a spec saved before the registry left CONVOY_LOCAL_REGISTRIES
        raise OciError(refusal, refused=True)


def _reference(spec: ImageSpec) -> tuple[str, str]:
    """(repository name, tag or digest) of `spec.oci`."""
    rest = spec.oci.split("/", 1)[1]
    if "@" in rest:
        name, digest = rest.split("@", 1)
        return name.rsplit(":", 1)[0] if ":" in name else name, digest
    name, _, tag = rest.partition(":")
    return name, tag or "latest"


class _DeadlineReader(io.RawIOBase):
    """A connection's receiving side: each receive waits at most until the pull's deadline."""

    def __init__(self, owner: _DeadlineSocket) -> None:
        self.owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.owner.sock.settimeout(self.owner.registry.wait_left())
        return self.owner.sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self.owner.readers -= 1
            self.owner.release()
        super().close()


class _DeadlineSocket:
    """A socket as http.client uses it, held to the pull's deadline at every receive and send:
    a registry dribbling a header byte at a time (or a token's body) outlasted PULL_TIMEOUT_S,
    as each receive had TIMEOUT_S of its own. As a socket's, it closes with the last of the
    connection and its response (http.client closes the first while the second reads)."""

    def __init__(self, sock: socket.socket, registry: _Registry) -> None:
        self.sock, self.registry = sock, registry
        self.readers, self.closed = 0, False

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(self.registry.wait_left())
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        self.readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        self.closed = True
        self.release()

    def release(self) -> None:
        if self.closed and self.readers == 0:
            self.sock.close()


class _Registry:
    """One image's registry, spoken to over HTTP with addresses vetted at each connection."""

    def __init__(self, spec: ImageSpec, creds: str | None) -> None:
        _registry_vet(spec)
        self.spec = spec
        self.origin = f"{'http' if spec.oci_is_local else 'https'}://{spec.oci_registry}"
        self.name, self.reference = _reference(spec)
        self.basic = "Basic " + base64.b64encode(creds.encode()).decode() if creds else None
        self.authorization: str | None = None
        self.upstream = UpstreamConfig.from_env()
        self.deadline = time.monotonic() + PULL_TIMEOUT_S
        self._endpoint(self.origin)  # refused before any request

    def wait_left(self) -> float:
        """How long the next receive may wait: TIMEOUT_S, or less as the pull's deadline nears;
        OciError once it has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise OciError(f"{self.spec.oci}: the pull passed {PULL_TIMEOUT_S:.0f} s")
        return min(TIMEOUT_S, left)

    # ---- where a connection may go --------------------------------------------------------

    def _endpoint(self, url: str) -> tuple[str, str, int, list[str]]:
        """(scheme, host, port, addresses) of `url` when Convoy may connect there: https to a
        host whose every address is public (or allowed by CONVOY_CODEHOST_ALLOW), or the local
        registry itself; OciError(refused) otherwise."""
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            port = 0
        where = self.spec.oci_registry
        if self.spec.oci_is_local:
            if scheme != "http" or parts.netloc.lower() != where.lower():
                raise OciError(
                    f"the registry {where} sent Convoy to another address: refused", refused=True
                )
            return scheme, host, port, self._resolve(host, port)
        if scheme != "https" or not host or not port:
            raise OciError(
                f"the registry {where} sent Convoy to a plain-HTTP or malformed address: refused",
                refused=True,
            )
        try:
            addresses = host_addresses_vet(host, strict=True)
        except RepoUrlError as exc:
            what = "the registry" if url.startswith(self.origin) else f"an address {where} named:"
            raise OciError(f"{what} {where}: {exc.message}", refused=True) from None
        if not addresses:  # a name CONVOY_CODEHOST_ALLOW lists: trusted as it resolves
            addresses = self._resolve(host, port)
        return scheme, host, port, addresses

    def _resolve(self, host: str, port: int) -> list[str]:
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise OciError(f"the registry {self.spec.oci_registry} did not answer") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _connect(self, scheme: str, host: str, port: int, addresses: list[str]) -> socket.socket:
        """A socket to one of `addresses` (through the host's proxy, asked for the address,
        never the name: it would resolve the name again), TLS-wrapped for https."""
        proxy = None if self.spec.oci_is_local else self.upstream.for_target(host, tunnel=True)
        sock = None
        for address in addresses:
            try:
                if proxy is None:
                    sock = socket.create_connection((address, port), timeout=self.wait_left())
                else:
                    sock = self._tunnel(proxy, address, port)
                break
            except OSError:
                continue
        if sock is None:
            raise OciError(f"the registry {self.spec.oci_registry} did not answer")
        if scheme == "https":
            sock.settimeout(self.wait_left())
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            except OSError:
                sock.close()
                raise OciError(f"the registry {self.spec.oci_registry} did not answer") from None
        return sock

    def _tunnel(self, proxy, address: str, port: int) -> socket.socket:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=self.wait_left())
        target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if proxy.authorization:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        sock.sendall((head + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer and len(answer) < 65536:
            try:
                sock.settimeout(self.wait_left())
            except OciError:
                sock.close()
                raise
            more = sock.recv(4096)
            if not more:
                break
            answer += more
        if answer.split(b" ", 2)[1:2] != [b"200"]:
            sock.close()
            raise OSError("the host's proxy refused the tunnel")
        return sock

    # ---- requests -------------------------------------------------------------------------

    def _fail(self, status: int) -> OciError:
        """A fixed text naming the status: a registry's answer (or the answer of what it sent
        Convoy to) never reaches the manager."""
        where = self.spec.oci_registry
        if status == 404:
            return OciError(f"{self.spec.oci}: not found in {where}", not_found=True)
        what = "refused access" if status in (401, 403) else "failed"
        return OciError(f"the registry {where} {what} (HTTP {status})")

    def _send(self, url: str, headers: dict[str, str], *, realm: bool = False):
        """GET `url`, following redirects, each vetted; the connection, its final response and
        that response's URL. Credentials go only to the registry's own origin, and to the token
        realm (`realm`) it named, as a registry's clients send them; never to a redirect's other
        host."""
        for _ in range(REDIRECTS_MAX + 1):
            scheme, host, port, addresses = self._endpoint(url)
            sock = self._connect(scheme, host, port, addresses)
            conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
            conn.sock = _DeadlineSocket(sock, self)  # type: ignore[assignment]
            parts = urlsplit(url)
            sent = dict(headers)
            if not realm and not url.startswith(self.origin + "/"):
                sent.pop("Authorization", None)
            realm = False
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", parts.netloc)
                for name, value in sent.items():
                    conn.putheader(name, value)
                conn.endheaders()
                response = conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()
                raise OciError(f"the registry {self.spec.oci_registry} did not answer") from None
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                response.close()
                conn.close()
                continue
            return conn, response, url
        raise OciError(f"the registry {self.spec.oci_registry} redirected too many times")

    def _login(self, challenge: str) -> None:
        """Answer a 401's challenge: Basic with the login, or a Bearer token from the realm
        (vetted as any address; the login goes there, as a registry's clients send it)."""
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic" and self.basic:
            self.authorization = self.basic
            return
        if scheme != "bearer":
            raise self._fail(401)
        fields = dict(_CHALLENGE.findall(challenge))
        realm = fields.get("realm", "")
        query = {"service": fields.get("service", "")} if fields.get("service") else {}
        query["scope"] = fields.get("scope") or f"repository:{self.name}:pull"
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {"Authorization": self.basic} if self.basic else {}
        conn, response, _ = self._send(url, headers, realm=True)
        try:
            if response.status != 200:
                raise self._fail(response.status)
            body = response.read(TOKEN_MAX)
        except (OSError, http.client.HTTPException):
            raise OciError(f"the registry {self.spec.oci_registry} did not answer") from None
        finally:
            response.close()
            conn.close()
        try:
            token = json.loads(body)
            token = token.get("token") or token.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise OciError(f"the registry {self.spec.oci_registry} gave no token")
        self.authorization = f"Bearer {token}"

    def get(self, path: str, accept: str, sink: Callable[[bytes], None], limit: int) -> str:
        """GET `path` of the registry into `sink` (at most `limit` bytes); its Content-Type."""
        for attempt in range(2):
            headers = {"Accept": accept}
            if self.authorization:
                headers["Authorization"] = self.authorization
            conn, response, final = self._send(f"{self.origin}{path}", headers)
            try:
                challenge = response.getheader("WWW-Authenticate") or ""
                if response.status == 401 and attempt == 0 and challenge:
                    response.close()
                    conn.close()
                    # A challenge from where a redirect led is not the registry's: its realm
                    # would receive the registry's login.
                    if not final.startswith(self.origin + "/"):
                        raise self._fail(401)
                    self._login(challenge)
                    continue
                if response.status != 200:
                    raise self._fail(response.status)
                total = 0
                while chunk := self._receive(response):
                    total += len(chunk)
                    if total > limit:
                        raise OciError(
                            f"{self.spec.oci}: the registry sent more than {limit:,} bytes"
                        )
                    sink(chunk)
                return (response.getheader("Content-Type") or "").split(";")[0].strip()
            finally:
                response.close()
                conn.close()
        raise self._fail(401)

    def _receive(self, response: http.client.HTTPResponse) -> bytes:
        """One receive of the body (the deadline holds for each)."""
        try:
            return response.read1(CHUNK)
        except (OSError, http.client.HTTPException):
            raise OciError(f"the registry {self.spec.oci_registry} did not answer") from None

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest `reference` names and its media type; checked against the digest when
        `reference` is one."""
        parts: list[bytes] = []
        media = self.get(f"/v2/{self.name}/manifests/{reference}", _ACCEPT, parts.append,
                         MANIFEST_MAX)  # fmt: skip
        raw = b"".join(parts)
        if reference.startswith("sha256:") and _sha256(raw) != reference:
            raise OciError(f"{self.spec.oci}: the registry sent a manifest of another digest")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise OciError(f"{self.spec.oci}: the registry sent no manifest")
        media = body.get("mediaType") or media
        if not isinstance(media, str):
            raise OciError(f"{self.spec.oci}: the registry sent a malformed manifest")
        return raw, media

    def blob(self, digest: str, path: Path, limit: int) -> int:
        if not _DIGEST.match(digest):
            raise OciError(f"{self.spec.oci}: a blob digest Convoy does not read")
        hasher = hashlib.sha256()
        with path.open("wb") as file:

            def sink(chunk: bytes) -> None:
                hasher.update(chunk)
                file.write(chunk)

            self.get(f"/v2/{self.name}/blobs/{digest}", "*/*", sink, limit)
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise OciError(f"{self.spec.oci}: the registry sent a blob of another digest")
        return path.stat().st_size


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_digest(spec: ImageSpec, *, creds: str | None = None) -> str:
    """The manifest digest the reference points at now (part of the image key: a moved tag is a
    new image)."""
    registry = _Registry(spec, creds)
    raw, _ = registry.manifest(registry.reference)
    return _sha256(raw)


def _platform_pick(spec: ImageSpec, index: dict, arch: str) -> str:
    """The digest of the index's image for linux/`arch`: a sha256 digest, as an index may only
    name one (a tag there was fetched unverified, and any text went into the request's path)."""
    wanted = _ARCH.get(arch, arch)
    entries = index.get("manifests", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise OciError(f"{spec.oci}: the registry sent a malformed index")
    for entry in entries:
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        if platform.get("os") == "linux" and platform.get("architecture") == wanted:
            digest = entry.get("digest")
            if not isinstance(digest, str) or not _DIGEST.match(digest):
                raise OciError(f"{spec.oci}: the index names linux/{wanted} by no sha256 digest")
            return digest
    raise OciError(f"{spec.oci}: no image for linux/{wanted} in the registry", not_found=True)


def oci_pull(
    spec: ImageSpec,
    *,
    workdir: Path,
    rootfs: Path,
    run: Callable[..., int],
    line: Callable[[str], None],
    arch: str,
    digest: str,
    creds: str | None = None,
) -> dict:
    """Copy the image whose manifest (or index) has `digest` (what `oci_digest` resolved, in
    the image's key) into an OCI layout under `workdir` and unpack it as `rootfs`; return the
    image's runtime config (`env`, `cwd`) from the bundle umoci makes. Fetched by digest, not
    by tag: a tag moved since would put other content under the key."""
    if not _DIGEST.match(digest):
        raise OciError(f"{spec.oci}: no manifest digest to pull")
    registry = _Registry(spec, creds)
    layout = workdir / "layout"
    bundle = workdir / "bundle"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    line(f"$ pull {spec.oci} (Convoy's registry client)")
    raw, media = registry.manifest(digest)
    if media in (OCI_INDEX, DOCKER_LIST):
        digest = _platform_pick(spec, json.loads(raw), arch)
        line(f"linux/{_ARCH.get(arch, arch)}: {digest}")
        raw, media = registry.manifest(digest)
    if media not in (OCI_MANIFEST, DOCKER_MANIFEST):  # its text is the registry's: not shown
        raise OciError(f"{spec.oci}: a manifest of a type Convoy does not read")
    manifest = json.loads(raw)  # a JSON object: manifest() checked
    config, layers = manifest.get("config"), manifest.get("layers", [])
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise OciError(f"{spec.oci}: the registry sent a malformed manifest")
    left = settings.IMAGE_BUILD_DISK_MB * 1024 * 1024
    for blob in [config, *layers]:
        kind = blob.get("mediaType", "") if isinstance(blob, dict) else None
        if not isinstance(kind, str):
            raise OciError(f"{spec.oci}: the registry sent a malformed manifest")
        kind = _DOCKER_TO_OCI.get(kind, kind)
        if blob is not config and kind not in _LAYERS:
            raise OciError(f"{spec.oci}: a layer of a type Convoy does not read")
        digest = blob.get("digest")
        if not isinstance(digest, str):
            raise OciError(f"{spec.oci}: a blob digest Convoy does not read")
        size = registry.blob(digest, blobs / digest.removeprefix("sha256:"), left)
        left -= size
        line(f"blob {digest} ({size:,} bytes)")
        blob["mediaType"] = kind
        blob.pop("urls", None)  # a foreign layer's other addresses: fetched from the registry
    manifest["mediaType"] = OCI_MANIFEST
    data = json.dumps(manifest).encode()
    (blobs / _sha256(data).removeprefix("sha256:")).write_bytes(data)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entry = {"mediaType": OCI_MANIFEST, "digest": _sha256(data), "size": len(data),
             "annotations": {"org.opencontainers.image.ref.name": "image"}}  # fmt: skip
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    with tempfile.TemporaryDirectory(prefix="convoy-umoci-") as home:
        unpack = ["umoci", "unpack", *([] if os.geteuid() == 0 else ["--rootless"]),
                  "--image", f"{layout}:image", str(bundle)]  # fmt: skip
        if run(unpack, env=oci_tool_env(home)) != 0:
            raise OciError(f"could not unpack {spec.oci}")
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "rootfs").rename(rootfs)
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.rmtree(layout, ignore_errors=True)
    process = config.get("process") or {}
    return {"env": list(process.get("env") or []), "cwd": process.get("cwd") or "/"}
