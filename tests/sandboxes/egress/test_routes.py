"""Internal routes (the model gateway's name) and the operator-trusted ranges of the host's own
package indexes: each opens exactly one thing, only for the names it was made for."""

from __future__ import annotations

import http.server
import socketserver
import tempfile
import threading
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from core.errors import Invalid
from sandboxes.egress import worker
from sandboxes.egress.addresses import index_ranges_parse
from sandboxes.egress.policy import AllowRule, Limits, NetworkPolicy, network_parse
from sandboxes.egress.proxy import EgressProxy
from sandboxes.egress.wire import BadRequest, UpstreamConfig, hostport_split
from tests.sandboxes.egress.conftest import TEST_HOSTS, connect, proxy_request
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"internal service saw Host {self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


@pytest.fixture
def unix_service(short_tmp):
    path = Path(tempfile.mkdtemp(prefix="gw-", dir=short_tmp)) / "svc.sock"
    server = _UnixHTTP(str(path), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path
    server.shutdown()
    server.server_close()


@pytest.fixture
def tcp_service():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _get(path: Path, host: str) -> tuple[int, bytes]:
    status, body, sock = proxy_request(
        path, f"GET http://{host}/v1/models HTTP/1.1\r\nHost: {host}\r\n\r\n"
    )
    sock.close()
    return status, body


def _events_open(proxy, key, policy):
    events: list = []
    return proxy.sandbox_open(key, policy, Limits(connect_timeout_s=1), events.append), events


def test_a_route_reaches_its_service_by_name_only_from_sandboxes_that_allow_it(
    proxy, unix_service, tcp_service
):
    proxy.route_add("gateway.convoy.internal", 80, unix_service)
    proxy.route_add("tcp-gateway.convoy.internal", 80, tcp_service)
    rule = AllowRule("gateway.convoy.internal", frozenset({80}))
    rule_tcp = AllowRule("tcp-gateway.convoy.internal", frozenset({80}))
    allowed, events = _events_open(proxy, "with", NetworkPolicy(rules=(rule, rule_tcp)))
    other, _ = _events_open(proxy, "without", network_parse({"allow": ["x.test"]}))

    status, body = _get(allowed, "gateway.convoy.internal")
    assert status == 200 and b"saw Host gateway.convoy.internal" in body
    status, body = _get(allowed, "tcp-gateway.convoy.internal")
    assert status == 200 and b"internal service" in body
    wait_for(lambda: len(events) >= 2, timeout=10, what="route events")
    assert events[0].via == f"route {unix_service}" and events[0].allowed
    assert events[1].via == f"route 127.0.0.1:{tcp_service}"

    # Without the name in its policy, a sandbox does not reach the route.
    assert _get(other, "gateway.convoy.internal") == (403, b"not in network.allow\n")
    # The service's address stays refused, even for the sandbox that may use the name.
    status, body, sock = connect(allowed, f"127.0.0.1:{tcp_service}")
    sock.close()
    assert (status, body) == (403, b"loopback\n")
    # Another port of the routed name is not the route.
    assert _get(allowed, "gateway.convoy.internal:8080")[0] == 403
    proxy.route_remove("gateway.convoy.internal", 80)
    status, body = _get(allowed, "gateway.convoy.internal")
    assert status == 502 and b"does not resolve" in body  # back to DNS, which knows no such name


def test_route_arguments_are_checked():
    proxy = EgressProxy(Path("/nonexistent"), upstream=UpstreamConfig())
    for name, port, target in [
        ("*.convoy.internal", 80, 9000),
        ("gateway.convoy.internal", 80, 0),
        ("gateway.convoy.internal", 80, "relative.sock"),
        ("127.0.0.1", 80, 9000),
    ]:
        with pytest.raises(Invalid):
            proxy.route_add(name, port, target)


def test_worker_routes_survive_a_new_proxy(settings, short_tmp, unix_service):
    settings.DATA_DIR = short_tmp
    worker.egress_proxy_stop()
    worker.egress_route_add("gateway.convoy.internal", 80, unix_service)
    try:
        proxy = worker.egress_proxy()
        rule = AllowRule("gateway.convoy.internal", frozenset({80}))
        path, _ = _events_open(proxy, "w", NetworkPolicy(rules=(rule,)))
        assert _get(path, "gateway.convoy.internal")[0] == 200
    finally:
        worker.egress_route_remove("gateway.convoy.internal", 80)
        worker.egress_proxy_stop()


@pytest.fixture
def index_proxy(short_tmp):
    root = Path(tempfile.mkdtemp(prefix="i-", dir=short_tmp))
    p = EgressProxy(
        root,
        upstream=UpstreamConfig(),
        test_hosts=TEST_HOSTS,  # internal.test -> 10.0.0.1
        index_ranges=index_ranges_parse("10.0.0.1/32"),
    ).start()
    yield p
    p.stop()


def test_index_ranges_admit_only_the_hosts_package_index_names(index_proxy, short_tmp):
    index = AllowRule("internal.test", index=True)
    as_index, events = _events_open(index_proxy, "index", NetworkPolicy(rules=(index,)))
    as_campaign, _ = _events_open(
        index_proxy, "campaign", network_parse({"allow": ["internal.test"]})
    )
    # A campaign's own allow: entry never reaches a non-public address.
    status, body, sock = connect(as_campaign, "internal.test:443")
    sock.close()
    assert (status, body) == (403, b"resolves to 10.0.0.1: private\n")
    # The host's index name may: the proxy connects to it (or tries: whatever answers there).
    status, body, sock = connect(as_index, "internal.test:443")
    sock.close()
    assert status in (200, 502), (status, body)
    wait_for(lambda: events, timeout=10, what="the index event")
    assert events[0].allowed and events[0].address == "10.0.0.1"
    # Without the operator's ranges the same index name is refused.
    plain = EgressProxy(short_tmp / "plain", upstream=UpstreamConfig(), test_hosts=TEST_HOSTS)
    try:
        path, _ = _events_open(plain.start(), "index", NetworkPolicy(rules=(index,)))
        status, body, sock = connect(path, "internal.test:443")
        sock.close()
        assert (status, body) == (403, b"resolves to 10.0.0.1: private\n")
    finally:
        plain.stop()


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.0/8",
        "127.0.0.1/32",
        "169.254.169.254/32",
        "0.0.0.0/0",
        "::1/128",
        "fe80::/64",
        "::ffff:10.0.0.0/104",
        "10.0.0.1/8",
        "not-a-range",
    ],
)
def test_index_ranges_refuse_what_a_sandbox_may_never_reach(text):
    with pytest.raises(ValueError):
        index_ranges_parse(text)


def test_index_ranges_setting_is_checked(settings):
    assert index_ranges_parse("198.51.100.10/32, 10.20.0.0/16")[1].prefixlen == 16
    settings.EGRESS_INDEX_ADDRESSES = "169.254.0.0/16"
    with pytest.raises(ImproperlyConfigured):
        worker.index_ranges_from_settings()


def test_ports_are_ascii_digits_only():
    """`str.isdigit()` accepts '³', which `int()` then rejects with a traceback."""
    with pytest.raises(Invalid) as info:
        network_parse({"allow": ["api.example.com:4³"]})
    assert info.value.field == "network.allow[0]"
    with pytest.raises(BadRequest):
        hostport_split("api.example.com:4³")


class _FirstLines(socketserver.StreamRequestHandler):
    """Records the first two lines it receives, answers 200."""

    def handle(self):
        self.server.seen.append((self.rfile.readline(), self.rfile.readline()))
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


@pytest.fixture
def recording_service():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _FirstLines)
    server.daemon_threads, server.seen = True, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_an_identifying_route_names_the_calling_sandbox_before_its_bytes(proxy, recording_service):
    port = recording_service.server_address[1]
    proxy.route_add("id.convoy.internal", 80, port, identify=True)
    proxy.route_add("id.convoy.internal", 8080, port, identify=True)
    proxy.route_add("plain.convoy.internal", 80, port)
    rules = (
        AllowRule("id.convoy.internal", frozenset({80, 8080})),
        AllowRule("plain.convoy.internal", frozenset({80})),
    )
    path, _ = _events_open(proxy, "sandbox-41", NetworkPolicy(rules=rules))
    assert _get(path, "id.convoy.internal")[0] == 200
    first, second = recording_service.seen[-1]
    assert first == b"CONVOY-SANDBOX sandbox-41\r\n" and second.startswith(b"GET /v1/models ")
    # A tunnel to port 80 carries one HTTP request: a forged line is not one.
    status, _body, sock = connect(path, "id.convoy.internal:80")
    assert status == 200
    sock.sendall(b"CONVOY-SANDBOX sandbox-42\r\nGET / HTTP/1.1\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    sock.close()
    # The tunnel's upstream connection got the proxy's line and nothing of the forged bytes. Its
    # record is awaited here, or it could land after the next call's.
    wait_for(lambda: len(recording_service.seen) == 2, timeout=10, what="the refused tunnel")
    assert recording_service.seen[-1] == (b"CONVOY-SANDBOX sandbox-41\r\n", b"")
    # Through a tunnel to another port the sandbox writes what it likes, but only after the
    # proxy's line.
    status, _body, sock = connect(path, "id.convoy.internal:8080")
    assert status == 200
    sock.sendall(b"CONVOY-SANDBOX sandbox-42\r\nGET / HTTP/1.1\r\n\r\n")
    wait_for(lambda: len(recording_service.seen) == 3, timeout=10, what="the tunnelled call")
    sock.close()
    assert recording_service.seen[-1] == (
        b"CONVOY-SANDBOX sandbox-41\r\n",
        b"CONVOY-SANDBOX sandbox-42\r\n",
    )
    # A route that does not identify passes the sandbox's bytes only.
    assert _get(path, "plain.convoy.internal")[0] == 200
    assert recording_service.seen[-1][0].startswith(b"GET /v1/models ")
