"""Fixtures for egress tests: a self-signed HTTPS upstream and a plain-HTTP one on 127.0.0.1,
a running EgressProxy with the test-only name mapping, and a client that speaks to its socket.

Everything stays on 127.0.0.1; `api.test` reaches the loopback upstream only through the
test mapping and only on the upstream's own port.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxes.egress.proxy import EgressProxy
from sandboxes.egress.wire import UpstreamConfig
from tests.support import cert_make

TEST_HOSTS = {
    "api.test": "127.0.0.1",
    "internal.test": "10.0.0.1",
    "metadata.test": "169.254.169.254",
    "mapped.test": "::ffff:10.1.2.3",
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"x" * 65536
            while size > 0:
                self.wfile.write(block[: min(size, len(block))])
                size -= len(block)
            return
        body = f"hello from upstream; host={self.headers.get('Host')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@dataclass
class Upstream:
    port: int
    cert: Path
    server: http.server.ThreadingHTTPServer


def upstream_start(cert: Path | None = None, key: Path | None = None) -> Upstream:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    if cert is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Upstream(server.server_address[1], cert, server)


class _KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    """An origin that serves every request a connection carries, whatever `Connection` says
    (as some servers and proxies do), and records each request's Host, path and body."""

    protocol_version = "HTTP/1.1"
    seen: list  # set per server

    def _serve(self):
        body = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            try:
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
            except ValueError:  # a malformed body: nothing served
                self.close_connection = True
                return
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        elif self.headers.get("Content-Length"):
            body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.headers.get("Host"), self.path, body))
        answer = f"served host={self.headers.get('Host')} path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("Connection", "keep-alive")
        self.end_headers()
        self.wfile.write(answer)
        self.close_connection = False

    do_GET = do_POST = _serve

    def log_message(self, *args):
        pass


@pytest.fixture
def keepalive_origin() -> Iterator[Upstream]:
    """A plain-HTTP origin on 127.0.0.1 that keeps every connection open; `.server.seen`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    server.daemon_threads = True
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Upstream(server.server_address[1], None, server)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def short_tmp() -> Iterator[Path]:
    """A short directory (UNIX socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="eg-", dir="/tmp"))
    path.chmod(0o711)  # bwrap, started as the sandboxes' host user, binds the sockets below
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_files(short_tmp) -> tuple[Path, Path]:
    d = short_tmp / "tls"
    d.mkdir()
    return cert_make(d, ["api.test", "other.test"])


@pytest.fixture(scope="session")
def https_upstream(tls_files) -> Iterator[Upstream]:
    up = upstream_start(*tls_files)
    yield up
    up.server.shutdown()


@pytest.fixture(scope="session")
def http_upstream() -> Iterator[Upstream]:
    up = upstream_start()
    yield up
    up.server.shutdown()


@pytest.fixture
def proxy(short_tmp, https_upstream) -> Iterator[EgressProxy]:
    root = Path(tempfile.mkdtemp(prefix="p-", dir=short_tmp))
    p = EgressProxy(
        root,
        upstream=UpstreamConfig(),
        test_hosts=TEST_HOSTS,
        sni_ports=frozenset({443, https_upstream.port}),
    ).start()
    yield p
    p.stop()


def proxy_request(socket_path: Path, head: str) -> tuple[int, bytes, socket.socket]:
    """Send a request head to the proxy's socket; (status, body-or-b"", open socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(socket_path))
    # A connection refused when accepted is answered and closed at once, its head unread: the
    # send may find it closed (EPIPE), the answer is still there to read.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(head.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1]) if head_bytes else 0
    if status != 200 or not head.startswith("CONNECT"):
        # ...and after the answer, the reader gets ECONNRESET instead of EOF.
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                rest += chunk
    return status, rest, s


def connect(socket_path: Path, target: str) -> tuple[int, bytes, socket.socket]:
    return proxy_request(socket_path, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")


def tls_get(sock: socket.socket, cert: Path, name: str, path: str = "/hello") -> bytes:
    """GET `path` over TLS on an established tunnel; the whole response."""
    ctx = ssl.create_default_context(cafile=str(cert))
    with ctx.wrap_socket(sock, server_hostname=name) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := tls.recv(1 << 20):
                data += chunk
        except ssl.SSLEOFError:  # http.server closes without a TLS close_notify
            pass
    return data
