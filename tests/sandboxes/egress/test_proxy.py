"""The egress proxy on its UNIX socket: what it lets through, what it refuses and why, the
limits, chaining to the host's proxy, per-sandbox sockets and the events it reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from core.errors import Invalid
from sandboxes.egress import worker
from sandboxes.egress.policy import Limits, network_parse
from sandboxes.egress.proxy import EgressProxy, open_connections_max
from sandboxes.egress.wire import UpstreamConfig, UpstreamProxy
from tests.sandboxes.egress.conftest import TEST_HOSTS, connect, proxy_request, tls_get
from tests.sandboxes.egress.hellos import (
    extension,
    hello_make,
    hello_real,
    records_make,
    server_names,
    tls_get_split,
)
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")


class Events(list):
    def wait(self, n: int = 1):
        wait_for(lambda: len(self) >= n, timeout=10, what=f"{n} egress events")
        return self[n - 1]


def _open(proxy, https_upstream, allow=None, **limits):
    events = Events()
    allow = allow or [f"api.test:{https_upstream.port}"]
    path = proxy.sandbox_open(
        "sb-1", network_parse({"allow": allow}), Limits(**limits), events.append
    )
    return path, events


def test_allowed_name_tunnels_tls_untouched(proxy, https_upstream):
    path, events = _open(proxy, https_upstream)
    # The worker's, and the sandboxes' host group's where bwrap runs as that user (root worker).
    assert path.stat().st_mode & 0o777 == (0o600 if proxy.socket_group is None else 0o660)
    status, _, sock = connect(path, f"api.test:{https_upstream.port}")
    assert status == 200
    body = tls_get(sock, https_upstream.cert, "api.test")
    assert b"hello from upstream" in body
    event = events.wait()
    assert (event.allowed, event.code, event.host, event.port) == (
        True,
        "ok",
        "api.test",
        https_upstream.port,
    )
    assert event.address == "127.0.0.1"
    assert event.bytes_up > 100 and event.bytes_down > len(body)
    assert event.duration_s > 0
    assert event.log_line().startswith(f"egress: api.test:{https_upstream.port} via 127.0.0.1")
    stats = proxy.sandbox_stats("sb-1")
    assert stats.summary() == "egress: 1 connection to 1 host, 0 refused"


@pytest.mark.parametrize(
    "target, code, reason",
    [
        ("other.test:443", "not_allowed", "not in network.allow"),
        ("api.test:5432", "not_allowed", "not in network.allow"),
        ("127.0.0.1:5432", "address", "loopback"),
        ("[::1]:6379", "address", "loopback"),
        ("169.254.169.254:80", "address", "link-local (cloud metadata)"),
        ("93.184.216.34:443", "ip_literal", "IP address: network.allow takes host names only"),
        ("internal.test:443", "address", "resolves to 10.0.0.1: private"),
        ("metadata.test:80", "address", "resolves to 169.254.169.254: link-local (cloud metadata)"),
        (
            "mapped.test:443",
            "address",
            "resolves to ::ffff:10.1.2.3: private (IPv4 10.1.2.3 inside IPv6)",
        ),
        ("localhost:5432", "address", "loopback"),
    ],
)
def test_refusals_answer_403_with_the_reason(proxy, https_upstream, target, code, reason):
    allow = [
        f"api.test:{https_upstream.port}",
        "internal.test",
        "metadata.test",
        "mapped.test",
        "localhost:5432",
    ]
    path, events = _open(proxy, https_upstream, allow=allow)
    status, body, sock = connect(path, target)
    sock.close()
    assert status == 403
    event = events.wait()
    assert (event.allowed, event.code) == (False, code)
    assert reason in event.reason
    assert body.decode().strip() == event.reason
    assert event.log_line() == f"egress refused: {event.target} ({event.reason})"


def test_refusal_log_line_for_the_host_database(proxy, https_upstream):
    path, events = _open(proxy, https_upstream)
    connect(path, "127.0.0.1:5432")[2].close()
    assert events.wait().log_line() == "egress refused: 127.0.0.1:5432 (loopback)"


def test_sni_must_match_the_connect_host(proxy, https_upstream):
    path, events = _open(proxy, https_upstream)
    status, _, sock = connect(path, f"api.test:{https_upstream.port}")
    assert status == 200
    with pytest.raises(OSError):
        tls_get(sock, https_upstream.cert, "other.test")
    event = events.wait()
    assert event.code == "sni"
    assert "TLS server name other.test does not match CONNECT host api.test" in event.reason


def _hello_refused(events, reason: str):
    event = events.wait()
    assert (event.allowed, event.code) == (False, "sni")
    assert reason in event.reason
    assert event.bytes_up == 0  # not a byte of it went upstream
    assert event.log_line() == f"egress refused: {event.target} ({event.reason})"
    return event


def test_a_client_hello_split_over_records_is_judged_by_its_server_name(proxy, https_upstream):
    """The name may sit in any record of a split ClientHello (it sat in the second one, and
    the proxy, reading the first only, let a hello naming another site of the CDN through)."""
    path, events = _open(proxy, https_upstream)
    target = f"api.test:{https_upstream.port}"
    status, _, sock = connect(path, target)
    assert status == 200
    with pytest.raises(OSError):
        tls_get_split(sock, https_upstream.cert, "other.test", sizes=(40,))
    _hello_refused(events, "TLS server name other.test does not match CONNECT host api.test")

    # Split the same way and naming the CONNECT host, it goes through: servers take it.
    status, _, sock = connect(path, target)
    assert b"hello from upstream" in tls_get_split(sock, https_upstream.cert, "api.test")
    assert events.wait(2).code == "ok"


def test_a_tls_port_without_a_server_name_is_refused(proxy, https_upstream):
    path, events = _open(proxy, https_upstream)
    status, _, sock = connect(path, f"api.test:{https_upstream.port}")
    assert status == 200
    sock.sendall(hello_real(None))
    assert sock.recv(100) == b""
    _hello_refused(events, "the TLS ClientHello names no server (it must name api.test)")


def test_plain_bytes_on_a_tls_port_are_refused(proxy, https_upstream):
    path, events = _open(proxy, https_upstream)
    status, _, sock = connect(path, f"api.test:{https_upstream.port}")
    assert status == 200
    sock.sendall(b"GET /hello HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert sock.recv(100) == b""
    _hello_refused(events, "not TLS: the client's first bytes are not a TLS handshake")


def test_an_encrypted_client_hello_is_refused(proxy, https_upstream):
    """ECH names the CDN's public name outside and the real site inside, encrypted."""
    path, events = _open(proxy, https_upstream)
    status, _, sock = connect(path, f"api.test:{https_upstream.port}")
    assert status == 200
    sock.sendall(records_make(hello_make(server_names(b"api.test"), extension(0xFE0D, bytes(64)))))
    assert sock.recv(100) == b""
    _hello_refused(events, "the TLS ClientHello hides its server name (encrypted_client_hello)")


def test_a_client_hello_that_never_ends_is_refused(short_tmp, https_upstream):
    p = EgressProxy(
        short_tmp / "slow-hello",
        upstream=UpstreamConfig(),
        test_hosts=TEST_HOSTS,
        sni_ports=frozenset({https_upstream.port}),
        head_timeout_s=0.5,
    ).start()
    try:
        path, events = _open(p, https_upstream)
        status, _, sock = connect(path, f"api.test:{https_upstream.port}")
        assert status == 200
        sock.sendall(hello_real("api.test")[:100])
        assert sock.recv(100) == b""
        _hello_refused(events, "no whole TLS ClientHello within 0.5 s")
    finally:
        p.stop()


def test_the_client_hello_counts_against_the_byte_cap(proxy, https_upstream, http_upstream):
    """A sandbox that has used nearly all of its bytes cannot send a ClientHello past them
    (it was forwarded before the cap was checked: up to 16 KB past it)."""
    allow = [f"api.test:{https_upstream.port}", f"api.test:{http_upstream.port}"]
    path, events = _open(proxy, https_upstream, allow=allow, egress_mb=1)
    url = f"http://api.test:{http_upstream.port}/bytes/{1024 * 1024 - 4000}"
    assert proxy_request(path, f"GET {url} HTTP/1.1\r\n\r\n")[0] == 200
    events.wait()
    left = Limits(egress_mb=1).egress_bytes - proxy.sandbox_stats("sb-1").bytes_total
    assert 0 < left < 4000
    status, _, sock = connect(path, f"api.test:{https_upstream.port}")
    assert status == 200
    sock.sendall(records_make(hello_make(server_names(b"api.test"), padding=8000)))
    event = events.wait(2)
    assert (event.code, event.reason) == ("limit", "egress limit of 1 MB reached")
    assert proxy.sandbox_stats("sb-1").bytes_total <= Limits(egress_mb=1).egress_bytes


@contextlib.contextmanager
def _tcp_port_for(socket_path: Path):
    """A port on 127.0.0.1 passing each connection to the proxy's socket, as the relay does
    inside a sandbox, for tools that take only a TCP proxy."""
    server = socket.create_server(("127.0.0.1", 0))

    def pump(src, dst):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def accept():
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                proxied = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                proxied.connect(str(socket_path))
                threading.Thread(target=pump, args=(client, proxied), daemon=True).start()
                threading.Thread(target=pump, args=(proxied, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_curl_git_and_pip_speak_tls_through_the_proxy(proxy, https_upstream, tmp_path):
    """Real clients' ClientHellos pass the whole-hello check (the server answers each: its
    answer is no git repository and no package index, which is not what is tested)."""
    path, events = _open(proxy, https_upstream)
    base = f"https://api.test:{https_upstream.port}"
    cert = str(https_upstream.cert)
    with _tcp_port_for(path) as port:
        proxy_url = f"http://127.0.0.1:{port}"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "https_proxy": proxy_url,
            "HTTPS_PROXY": proxy_url,
            "GIT_SSL_CAINFO": cert,
            "GIT_TERMINAL_PROMPT": "0",
        }
        curl = subprocess.run(
            ["curl", "-sS", "--cacert", cert, f"{base}/hello"], env=env, capture_output=True
        )
        assert b"hello from upstream" in curl.stdout, curl.stderr
        subprocess.run(["git", "ls-remote", f"{base}/repo.git"], env=env, capture_output=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        pip += ["--index-url", f"{base}/simple/", "--cert", cert, "-d", str(tmp_path), "six"]
        subprocess.run(pip, env=env, capture_output=True, timeout=120)
    for n in (1, 2, 3):
        event = events.wait(n)
        assert (event.code, event.host) == ("ok", "api.test"), event.reason
        assert event.bytes_down > 500  # the server's certificate and answer came back


def test_plain_http_absolute_uri_is_forwarded_with_host_checked(
    proxy, https_upstream, http_upstream
):
    path, events = _open(proxy, https_upstream, allow=[f"api.test:{http_upstream.port}"])
    url = f"http://api.test:{http_upstream.port}/hello"
    host = f"api.test:{http_upstream.port}"
    status, body, _ = proxy_request(
        path, f"GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Connection: keep-alive\r\n\r\n"
    )
    assert status == 200
    assert f"host={host}".encode() in body
    assert events.wait().allowed

    status, body, _ = proxy_request(path, f"GET {url} HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert status == 400
    assert b"Host header other.test does not match" in body

    status, body, _ = proxy_request(path, f"GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n")
    assert status == 400
    assert b"this is a proxy" in body


def test_byte_limit_cuts_the_transfer_then_refuses_new_connections(proxy, https_upstream):
    path, events = _open(proxy, https_upstream, egress_mb=1)
    status, _, sock = connect(path, f"api.test:{https_upstream.port}")
    assert status == 200
    body = tls_get(sock, https_upstream.cert, "api.test", path=f"/bytes/{3 * 1024 * 1024}")
    assert len(body) < 2 * 1024 * 1024
    event = events.wait()
    assert (event.code, event.reason) == ("limit", "egress limit of 1 MB reached")
    assert event.bytes_up + event.bytes_down <= 1024 * 1024

    status, body, _ = connect(path, f"api.test:{https_upstream.port}")
    assert status == 403
    assert body == b"egress limit of 1 MB reached\n"
    assert events.wait(2).code == "limit"


def test_concurrent_connection_limit(proxy, https_upstream):
    path, _ = _open(proxy, https_upstream, max_connections=2)
    held = [connect(path, f"api.test:{https_upstream.port}") for _ in range(2)]
    assert [h[0] for h in held] == [200, 200]
    status, body, _ = connect(path, f"api.test:{https_upstream.port}")
    assert status == 403
    assert body == b"more than 2 concurrent connections\n"
    for h in held:
        h[2].close()
    wait_for(lambda: proxy.sandbox_stats("sb-1").active == 0, timeout=10, what="slots freed")
    assert connect(path, f"api.test:{https_upstream.port}")[0] == 200


def test_each_sandbox_has_its_own_socket_policy_and_events(proxy, https_upstream):
    a_events, b_events = Events(), Events()
    a = proxy.sandbox_open(
        "sb-a", network_parse({"allow": [f"api.test:{https_upstream.port}"]}), None, a_events.append
    )
    b = proxy.sandbox_open("sb-b", network_parse("none"), None, b_events.append)
    assert a != b and a.parent != b.parent
    # The worker's alone: bwrap gives each to its own sandbox's group (`_binds_reachable`).
    assert a.parent.stat().st_mode & 0o777 == 0o700
    assert connect(a, f"api.test:{https_upstream.port}")[0] == 200
    assert connect(b, f"api.test:{https_upstream.port}")[0] == 403
    assert a_events.wait().allowed and not b_events.wait().allowed
    proxy.sandbox_close("sb-b")
    assert not b.exists()
    assert connect(a, f"api.test:{https_upstream.port}")[0] == 200
    proxy.sandbox_close("sb-b")  # idempotent


def test_close_ends_open_tunnels_and_reports_them(proxy, https_upstream):
    path, events = _open(proxy, https_upstream)
    status, _, sock = connect(path, f"api.test:{https_upstream.port}")
    assert status == 200
    proxy.sandbox_close("sb-1")
    event = events.wait()
    assert event.allowed and event.host == "api.test"
    assert sock.recv(10) == b""


def test_start_and_stop_are_idempotent(short_tmp):
    p = EgressProxy(short_tmp / "idem", upstream=UpstreamConfig())
    p.start()
    p.start()
    path = p.sandbox_open("x", network_parse("none"))
    p.stop()
    p.stop()
    assert not p.running
    assert not path.exists()


def test_without_the_test_mapping_names_need_dns_and_loopback_is_refused(short_tmp, https_upstream):
    p = EgressProxy(short_tmp / "nomap", upstream=UpstreamConfig()).start()
    try:
        events = Events()
        path = p.sandbox_open(
            "x", network_parse({"allow": [f"api.test:{https_upstream.port}"]}), None, events.append
        )
        assert connect(path, f"api.test:{https_upstream.port}")[0] in (403, 502)
        assert events.wait().code in ("dns", "address")
        assert connect(path, f"127.0.0.1:{https_upstream.port}")[0] == 403
        assert events.wait(2).reason == "loopback"
    finally:
        p.stop()


def test_production_refuses_the_test_mapping(settings, short_tmp):
    settings.EGRESS_TEST_HOSTS_ALLOWED = False
    with pytest.raises(ImproperlyConfigured):
        EgressProxy(short_tmp / "prod", test_hosts=TEST_HOSTS)
    with pytest.raises(ImproperlyConfigured):
        worker.test_hosts_from_env({"CONVOY_EGRESS_TEST_HOSTS": "api.test=127.0.0.1"})
    settings.EGRESS_TEST_HOSTS_ALLOWED = True
    assert worker.test_hosts_from_env({"CONVOY_EGRESS_TEST_HOSTS": "api.test=127.0.0.1"}) == {
        "api.test": "127.0.0.1"
    }


class FakeHostProxy:
    """The host's own outbound proxy: records CONNECTs and tunnels them to one fixed port."""

    def __init__(self, target_port: int, answer: bytes = b"HTTP/1.1 200 OK\r\n\r\n"):
        self.target_port, self.answer, self.seen = target_port, answer, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(4096)
        self.seen.append(head.decode())
        if not self.answer:  # a plain-HTTP request: recorded, answered, done
            client.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        client.sendall(self.answer)
        if not self.answer.startswith(b"HTTP/1.1 200"):
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:  # the test closed its end early
                dst.close()

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self):
        self.server.close()


def _chained(short_tmp, name, host_proxy, **options):
    config = UpstreamConfig(
        https=UpstreamProxy("127.0.0.1", host_proxy.port, "Basic dTpw"),
        http=UpstreamProxy("127.0.0.1", host_proxy.port),
    )
    return EgressProxy(short_tmp / name, upstream=config, test_hosts=TEST_HOSTS, **options).start()


def test_chains_to_the_hosts_proxy_with_connect(short_tmp, https_upstream):
    host_proxy = FakeHostProxy(https_upstream.port)
    p = _chained(short_tmp, "chain", host_proxy)
    try:
        events = Events()
        path = p.sandbox_open(
            "x", network_parse({"allow": [f"api.test:{https_upstream.port}"]}), None, events.append
        )
        status, _, sock = connect(path, f"api.test:{https_upstream.port}")
        assert status == 200
        assert b"hello from upstream" in tls_get(sock, https_upstream.cert, "api.test")
        # The address the proxy checked (api.test maps to 127.0.0.1 in tests), not the name,
        # which the host's proxy would resolve again (see the rebinding test below).
        assert host_proxy.seen[0].startswith(f"CONNECT 127.0.0.1:{https_upstream.port} HTTP/1.1")
        assert "Proxy-Authorization: Basic dTpw" in host_proxy.seen[0]
        event = events.wait()
        assert event.allowed and event.via == f"proxy 127.0.0.1:{host_proxy.port}"
        # Our own checks still come first: the host's proxy never sees a refused target.
        assert connect(path, "169.254.169.254:80")[0] == 403
        assert len(host_proxy.seen) == 1
    finally:
        p.stop()
        host_proxy.close()


def test_the_host_proxy_is_asked_for_the_checked_address_not_the_name(
    short_tmp, https_upstream, http_upstream
):
    """A name checked here and then resolved again by the host's proxy could answer a private
    or loopback address the second time (DNS rebinding), and the host's proxy would connect
    there: to its own loopback services, or the Convoy host's. So the host's proxy is asked
    for the address this proxy checked, for tunnels and for plain HTTP, and the name travels
    only inside (the TLS server name, the Host header)."""
    host_proxy = FakeHostProxy(https_upstream.port)
    plain_proxy = FakeHostProxy(http_upstream.port, answer=b"")
    p = _chained(short_tmp, "addr", host_proxy)
    config = UpstreamConfig(http=UpstreamProxy("127.0.0.1", plain_proxy.port))
    plain = EgressProxy(short_tmp / "addr-http", upstream=config, test_hosts=TEST_HOSTS).start()
    try:
        allow = {"allow": [f"api.test:{https_upstream.port}", f"api.test:{http_upstream.port}"]}
        path = p.sandbox_open("x", network_parse(allow), None, Events().append)
        status, _, sock = connect(path, f"api.test:{https_upstream.port}")
        assert status == 200
        assert b"hello from upstream" in tls_get(sock, https_upstream.cert, "api.test")
        assert host_proxy.seen[0].split("\r\n")[0] == (
            f"CONNECT 127.0.0.1:{https_upstream.port} HTTP/1.1"
        )

        path = plain.sandbox_open("y", network_parse(allow), None, Events().append)
        host = f"api.test:{http_upstream.port}"
        proxy_request(path, f"GET http://{host}/hello?a=1 HTTP/1.1\r\n\r\n")
        wait_for(lambda: plain_proxy.seen, timeout=10, what="the host proxy to get the request")
        head = plain_proxy.seen[0].split("\r\n")
        assert head[0] == f"GET http://127.0.0.1:{http_upstream.port}/hello?a=1 HTTP/1.1"
        assert f"Host: {host}" in head
    finally:
        p.stop()
        plain.stop()
        host_proxy.close()
        plain_proxy.close()


def test_an_operator_may_have_the_host_proxy_resolve_names(
    short_tmp, https_upstream, http_upstream
):
    # CONVOY_EGRESS_HOST_PROXY_BY_NAME: for host proxies that filter by name.
    host_proxy = FakeHostProxy(https_upstream.port)
    plain_proxy = FakeHostProxy(http_upstream.port, answer=b"")
    p = _chained(short_tmp, "byname", host_proxy, host_proxy_by_name=True)
    config = UpstreamConfig(http=UpstreamProxy("127.0.0.1", plain_proxy.port))
    plain = EgressProxy(
        short_tmp / "byname-http", upstream=config, test_hosts=TEST_HOSTS, host_proxy_by_name=True
    ).start()
    try:
        allow = {"allow": [f"api.test:{https_upstream.port}", f"api.test:{http_upstream.port}"]}
        path = p.sandbox_open("x", network_parse(allow), None, Events().append)
        status, _, sock = connect(path, f"api.test:{https_upstream.port}")
        sock.close()
        assert status == 200
        assert host_proxy.seen[0].startswith(f"CONNECT api.test:{https_upstream.port} HTTP/1.1")

        path = plain.sandbox_open("y", network_parse(allow), None, Events().append)
        url = f"http://api.test:{http_upstream.port}/hello"
        proxy_request(path, f"GET {url} HTTP/1.1\r\n\r\n")
        wait_for(lambda: plain_proxy.seen, timeout=10, what="the host proxy to get the request")
        assert plain_proxy.seen[0].startswith(f"GET {url} HTTP/1.1")
    finally:
        p.stop()
        plain.stop()
        host_proxy.close()
        plain_proxy.close()


def test_a_refusing_host_proxy_is_reported(short_tmp, https_upstream):
    host_proxy = FakeHostProxy(https_upstream.port, b"HTTP/1.1 407 Proxy Auth Required\r\n\r\n")
    p = _chained(short_tmp, "chain407", host_proxy)
    try:
        events = Events()
        path = p.sandbox_open(
            "x", network_parse({"allow": [f"api.test:{https_upstream.port}"]}), None, events.append
        )
        status, body, _ = connect(path, f"api.test:{https_upstream.port}")
        assert status == 502
        assert b"host proxy answered 'HTTP/1.1 407 Proxy Auth Required'" in body
        assert events.wait().code == "upstream"
    finally:
        p.stop()
        host_proxy.close()


def test_upstream_config_from_env_honours_no_proxy():
    config = UpstreamConfig.from_env(
        {"HTTPS_PROXY": "http://u:p@proxy.corp:8080", "NO_PROXY": "internal.corp"}
    )
    assert config.https == UpstreamProxy("proxy.corp", 8080, "Basic dTpw")
    assert config.http is None
    assert config.for_target("api.example.com", tunnel=True) == config.https
    assert config.for_target("git.internal.corp", tunnel=True) is None


def test_socket_path_too_long_is_refused_clearly(short_tmp):
    p = EgressProxy(short_tmp / ("d" * 100), upstream=UpstreamConfig())
    try:
        with pytest.raises(Invalid) as e:
            p.sandbox_open("x", network_parse("none"))
        assert "longer than 107 bytes" in e.value.message
    finally:
        p.stop()


def test_paths_are_short_and_per_sandbox(proxy):
    path = proxy.sandbox_open("run-42.variant-7", network_parse("none"))
    assert path.name == "proxy.sock" and isinstance(path, Path)
    assert path.parent.parent == proxy.root


@pytest.mark.parametrize("form", ["connect", "absolute"])
def test_a_host_name_that_is_not_a_dns_name_is_refused(proxy, https_upstream, form):
    """`localhost\\0.api.test` matches `*.api.test`, but the resolver stops at the NUL and looks
    up `localhost`: the proxy would check, and connect to, a name the campaign never allowed
    (a public host, for a real wildcard). A host name must be a DNS name: 400, no lookup."""
    port = https_upstream.port
    path, _ = _open(proxy, https_upstream, allow=[f"*.api.test:{port}"])
    host = f"localhost\x00.api.test:{port}"
    if form == "connect":
        status, body, sock = connect(path, host)
    else:
        status, body, sock = proxy_request(
            path, f"GET http://{host}/hello HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )
    sock.close()
    assert status == 400, body
    assert b"bad host name" in body


class _Idle:
    """Connections to a sandbox's socket that never send a request head."""

    def __init__(self, path: Path, count: int):
        self.sockets = []
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            s.setblocking(False)
            self.sockets.append(s)
        self.said: dict[socket.socket, bytes] = {}
        self.partial: dict[socket.socket, bytes] = {}

    def closed(self) -> list[bytes]:
        """What the proxy said on each connection it has closed so far (b"" if nothing). What
        a connection said before it closed is kept across calls: an answer can arrive in
        pieces on a loaded machine, and a piece read on one call was lost before."""
        for s in self.sockets:
            if s in self.said:
                continue
            try:
                while chunk := s.recv(65536):
                    self.partial[s] = self.partial.get(s, b"") + chunk
            except BlockingIOError:
                continue  # still open
            self.said[s] = self.partial.pop(s, b"")
        return list(self.said.values())

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def _proxy(short_tmp, **kw) -> EgressProxy:
    root = Path(tempfile.mkdtemp(prefix="p-", dir=short_tmp))
    return EgressProxy(root, upstream=UpstreamConfig(), test_hosts=TEST_HOSTS, **kw).start()


def test_connections_over_a_sandboxs_limit_are_closed_at_once(short_tmp, https_upstream):
    """Held until their request head arrived, 8,000 idle connections from one sandbox ran the
    worker out of descriptors: those over `max_connections` are now closed when accepted."""
    proxy = _proxy(short_tmp, head_timeout_s=60)
    try:
        path, events = _open(proxy, https_upstream, max_connections=4)
        held = _Idle(path, 40)
        wait_for(lambda: len(held.closed()) >= 36, timeout=10, what="36 connections closed")
        answers = held.closed()
        assert len(answers) == 36
        assert all(b"more than 4 concurrent connections" in a for a in answers)
        assert proxy.sandbox_stats("sb-1").active == 4
        assert events.wait(36).code == "limit"
        held.close()
        wait_for(lambda: proxy.sandbox_stats("sb-1").active == 0, timeout=10, what="slots freed")
        assert connect(path, f"api.test:{https_upstream.port}")[0] == 200
    finally:
        proxy.stop()


def test_all_sandboxes_together_stay_under_the_proxys_limit(short_tmp, https_upstream):
    proxy = _proxy(short_tmp, head_timeout_s=60, max_open_connections=6)
    try:
        a, _ = _open(proxy, https_upstream)
        b = proxy.sandbox_open(
            "sb-2", network_parse({"allow": [f"api.test:{https_upstream.port}"]})
        )
        held = _Idle(a, 10)
        wait_for(lambda: len(held.closed()) >= 4, timeout=10, what="4 connections closed")
        answers = held.closed()
        assert len(answers) == 4
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers)
        assert all(
            a.endswith(b"\r\n\r\nthe egress proxy has too many open connections\n") for a in answers
        )
        status, body, _ = connect(b, f"api.test:{https_upstream.port}")
        assert (status, body) == (503, b"the egress proxy has too many open connections\n")
        held.close()
        wait_for(lambda: proxy.sandbox_stats("sb-1").active == 0, timeout=10, what="slots freed")
        assert connect(b, f"api.test:{https_upstream.port}")[0] == 200
    finally:
        proxy.stop()


def test_the_proxys_limit_leaves_the_process_descriptors():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 16 <= 2 * open_connections_max() <= soft - 256


def test_a_connection_that_sends_no_request_head_is_closed_soon(proxy, https_upstream):
    path, _ = _open(proxy, https_upstream)
    began = time.monotonic()
    idle = _Idle(path, 1)
    wait_for(idle.closed, timeout=15, what="the idle connection closed")
    assert time.monotonic() - began < 10  # it was 30 s
    idle.close()


def test_the_loops_own_errors_are_logged_at_most_once_a_minute(proxy, caplog):
    """While descriptors ran out asyncio logged `socket.accept() out of system resource` for
    every listening socket every second: 46 MB of log in 10 s."""

    async def errors() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(500):
            loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": OSError(24)}
            )

    proxy.start()
    with caplog.at_level(logging.ERROR):
        asyncio.run_coroutine_threadsafe(errors(), proxy._loop).result(timeout=10)
    lines = [r for r in caplog.records if "out of system resource" in r.getMessage()]
    assert len(lines) == 1


@pytest.mark.parametrize("bare", ["\n", "\r"])
def test_a_bare_cr_or_lf_in_the_request_head_is_refused(proxy, https_upstream, http_upstream, bare):
    """Split on CRLF only, `X: 1<LF>Host: other` was one header to the proxy and was forwarded
    as is: two headers to an upstream that ends lines at LF, the second never judged."""
    host = f"api.test:{http_upstream.port}"
    path, events = _open(proxy, https_upstream, allow=[host])
    status, body, _ = proxy_request(
        path,
        f"GET http://{host}/hello HTTP/1.1\r\nHost: {host}\r\nX-A: 1{bare}Host: other.test\r\n\r\n",
    )
    assert status == 400
    assert b"bare CR or LF in the request head" in body
    assert events.wait().code == "bad_request"


def _exchange(path: Path, data: bytes) -> bytes:
    """Send `data` on one connection to the proxy's socket; everything it answers until it
    closes the connection (or 5 s pass: what came by then)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    with s:
        s.sendall(data)
        answer = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := s.recv(65536):
                answer += chunk
    return answer


def test_a_second_request_on_one_connection_is_never_forwarded(
    proxy, https_upstream, keepalive_origin
):
    """The proxy judged a connection's first request only and then passed on whatever
    followed: to an origin (or a host proxy, or a CDN's shared address) that serves every
    request on a connection, a second request named any host it liked."""
    allowed = f"api.test:{keepalive_origin.port}"
    path, events = _open(proxy, https_upstream, allow=[allowed])
    first = f"GET http://{allowed}/first HTTP/1.1\r\nHost: {allowed}\r\n\r\n"
    second = "GET http://other.test/second HTTP/1.1\r\nHost: other.test\r\n\r\n"
    answer = _exchange(path, (first + second).encode())

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in answer  # the client is told not to send another
    assert b"keep-alive" not in answer
    assert answer.count(b"HTTP/1.1 ") == 1
    assert keepalive_origin.server.seen == [(allowed, "/first", b"")]
    events.wait(2)
    refused = next(e for e in events if not e.allowed)
    assert (refused.host, refused.port, refused.code) == ("other.test", 80, "not_allowed")
    assert refused.log_line() == "egress refused: other.test:80 (not in network.allow)"
    assert next(e for e in events if e.allowed).host == "api.test"


def test_a_tunnel_to_an_http_port_carries_one_request_for_its_own_name(short_tmp, keepalive_origin):
    """A CONNECT tunnel to an allowed name's port 80 carried any request to that address."""
    p = EgressProxy(
        short_tmp / "http-ports",
        upstream=UpstreamConfig(),
        test_hosts=TEST_HOSTS,
        http_ports=frozenset({80, keepalive_origin.port}),
    ).start()
    try:
        allowed = f"api.test:{keepalive_origin.port}"
        events = Events()
        path = p.sandbox_open("t", network_parse({"allow": [allowed]}), None, events.append)
        tunnel = f"CONNECT {allowed} HTTP/1.1\r\nHost: {allowed}\r\n\r\n"
        first = f"GET /first HTTP/1.1\r\nHost: {allowed}\r\n\r\n"
        second = "GET /second HTTP/1.1\r\nHost: other.test\r\n\r\n"
        answer = _exchange(path, (tunnel + first + second).encode())
        assert answer.count(b"HTTP/1.1 200 ") == 2  # the tunnel's, then the first request's
        assert b"served host=" + allowed.encode() + b" path=/first" in answer
        assert keepalive_origin.server.seen == [(allowed, "/first", b"")]
        events.wait(2)
        assert [(e.host, e.code) for e in events if not e.allowed] == [
            ("other.test", "not_allowed")
        ]

        answer = _exchange(path, (tunnel + second).encode())
        assert b"HTTP/1.1 400 " in answer
        assert b"Host header other.test does not match" in answer
        assert len(keepalive_origin.server.seen) == 1
    finally:
        p.stop()


@pytest.mark.parametrize(
    "headers, reason",
    [
        (
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            b"both Content-Length and Transfer-Encoding",
        ),
        ("Content-Length: 4\r\nContent-Length: 40\r\n", b"several Content-Length headers"),
        ("Content-Length: 4\r\nContent-Length: 4\r\n", b"several Content-Length headers"),
        ("Transfer-Encoding: gzip, chunked\r\n", b"only chunked is forwarded"),
        ("Content-Length: +4\r\n", b"bad Content-Length"),
    ],
)
def test_a_request_whose_body_length_is_ambiguous_is_refused(
    proxy, https_upstream, keepalive_origin, headers, reason
):
    """Two readers could end such a body in different places: what one reads as body, the
    other reads as a second request, one the proxy never judged."""
    allowed = f"api.test:{keepalive_origin.port}"
    path, events = _open(proxy, https_upstream, allow=[allowed])
    smuggled = "GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n"
    post = f"POST http://{allowed}/p HTTP/1.1\r\nHost: {allowed}\r\n{headers}\r\n"
    answer = _exchange(path, f"{post}0\r\n\r\n{smuggled}".encode())
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert reason in answer
    assert events.wait().code == "bad_request"
    assert keepalive_origin.server.seen == []


def test_a_request_body_is_forwarded_and_what_follows_it_is_not(
    proxy, https_upstream, keepalive_origin
):
    allowed = f"api.test:{keepalive_origin.port}"
    path, events = _open(proxy, https_upstream, allow=[allowed])
    smuggled = f"GET http://{allowed}/again HTTP/1.1\r\nHost: {allowed}\r\n\r\n"
    sized = f"POST http://{allowed}/sized HTTP/1.1\r\nHost: {allowed}\r\nContent-Length: 5\r\n\r\n"
    answer = _exchange(path, (sized + "hello" + smuggled).encode())
    assert b"path=/sized" in answer
    chunked = (
        f"POST http://{allowed}/chunked HTTP/1.1\r\nHost: {allowed}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
    )
    answer = _exchange(path, (chunked + smuggled).encode())
    assert b"path=/chunked" in answer
    assert keepalive_origin.server.seen == [
        (allowed, "/sized", b"hello"),
        (allowed, "/chunked", b"hello world"),
    ]
    events.wait(4)
    assert sorted(e.code for e in events) == ["ok", "ok", "one_request", "one_request"]

    bad = f"POST http://{allowed}/bad HTTP/1.1\r\nHost: {allowed}\r\nTransfer-Encoding: chunked"
    answer = _exchange(path, f"{bad}\r\n\r\n5\nhello\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"bad chunk size line" in answer
