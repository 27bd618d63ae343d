"""A sandbox may not reach the Convoy host by one of the host's own addresses: they are public
by class, and a name resolving to one reached whatever the host serves on 0.0.0.0 / [::].

The proxy runs in a network namespace of its own (`unshare -n`, only loopback, nothing leaves
this machine) whose interface has the "public" addresses 1.2.3.4 and 2a00:1450:4001::1234.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.egress.addresses import HostAddresses
from sandboxes.egress.policy import network_parse
from sandboxes.egress.proxy import EgressProxy
from sandboxes.egress.wire import UpstreamConfig
from tests.sandboxes.egress.conftest import connect
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")

SCRIPT = r"""
import http.server, json, os, socket, sys, tempfile, threading, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django
django.setup()
from pathlib import Path
from sandboxes.egress.addresses import host_addresses_parse, host_networks_read
from sandboxes.egress.policy import network_parse
from sandboxes.egress.proxy import EgressProxy
from sandboxes.egress.wire import UpstreamConfig

class Service(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"a host service")
    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6  # [::] takes IPv4 too, as a host's services often do

server = Server(("::", 0), Service)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]
names = {
    "self.test": "1.2.3.4",
    "self6.test": "2a00:1450:4001::1234",
    "mapped.test": "::ffff:1.2.3.4",
    "nat.test": "5.6.7.8",
    "elsewhere.test": "9.9.9.9",
}
proxy = EgressProxy(
    Path(tempfile.mkdtemp(prefix="eg-", dir="/tmp")),
    upstream=UpstreamConfig(),
    test_hosts=names,
    host_addresses=host_addresses_parse("5.6.7.8"),
).start()
path = proxy.sandbox_open("sb-1", network_parse({"allow": [f"{n}:{port}" for n in names]}))
began = time.monotonic()
networks = host_networks_read()
out = {"networks": [str(n) for n in networks], "read_s": time.monotonic() - began}
for name in names:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    s.sendall(f"CONNECT {name}:{port} HTTP/1.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):  # a refusal: its reason follows, then EOF
        while chunk := s.recv(65536):
            data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    out[name] = [int(head.split()[1]), body.decode().strip()]
proxy.stop()
print(json.dumps(out))
"""


# Routes in the main table, as on a host that carries a full BGP table: reading the host's
# addresses must not dump them all (it took ~0.6 s on the proxy's loop, once a second).
MAIN_ROUTES = 200_000


def _in_namespace(tmp: Path) -> dict:
    routes = tmp / "routes.batch"
    routes.write_text(
        "".join(
            f"route add 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32 dev lo\n"
            for i in range(MAIN_ROUTES)
        )
    )
    setup = (
        "ip link set lo up && ip addr add 1.2.3.4/32 dev lo && "
        "ip -6 addr add 2a00:1450:4001::1234/128 dev lo nodad && "
        'ip -batch "$2" && exec "$0" -c "$1"'
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_VERSION"}
    env = {k: v for k, v in env.items() if not k.startswith("CONVOY_")}
    env.update(CONVOY_DATA_DIR=str(settings.DATA_DIR), SECRET_KEY=settings.SECRET_KEY)
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", setup, sys.executable, SCRIPT, str(routes)],
        cwd=Path(settings.BASE_DIR),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a network namespace")
    return _in_namespace(tmp_path_factory.mktemp("netns"))


def test_the_proxy_reads_the_hosts_own_addresses_from_the_kernel(answers):
    assert {"1.2.3.4/32", "2a00:1450:4001::1234/128", "127.0.0.0/8"} <= set(answers["networks"])
    assert not any(n.startswith("10.") for n in answers["networks"])  # main table: not ours


def test_reading_them_asks_the_kernel_for_the_local_table_only(answers):
    """A dump of every table took ~0.6 s here; the local table alone takes milliseconds."""
    assert answers["read_s"] < 0.1, answers["read_s"]


@pytest.mark.parametrize(
    "name, address",
    [
        ("self.test", "1.2.3.4"),
        ("self6.test", "2a00:1450:4001::1234"),
        ("mapped.test", "::ffff:1.2.3.4"),
        ("nat.test", "5.6.7.8"),  # the operator's CONVOY_EGRESS_HOST_ADDRESSES
    ],
)
def test_a_name_resolving_to_the_hosts_own_address_is_refused(answers, name, address):
    assert answers[name] == [403, f"resolves to {address}: this host's own address"]


def test_other_public_addresses_are_still_tried(answers):
    status, reason = answers["elsewhere.test"]
    assert status == 502 and "9.9.9.9" in reason  # no route in the namespace: not a refusal


# ---- a slow or failing read (a real reader handed to HostAddresses; no namespace needed) ----


class SlowReader:
    """The host's addresses as a host with huge routing tables gives them: the first read is
    quick, every later one takes `slow_s` (or until `release` is set)."""

    def __init__(self, networks: tuple, slow_s: float):
        self.networks, self.slow_s = networks, slow_s
        self.calls = 0
        self.release = threading.Event()

    def __call__(self) -> tuple:
        self.calls += 1
        if self.calls > 1:
            self.release.wait(self.slow_s)
        return self.networks


class FailingReader:
    """Reads once (when `succeed_first`), then fails as off Linux: no AF_NETLINK at all."""

    def __init__(self, *, succeed_first: bool):
        self.succeed_first = succeed_first
        self.calls = 0

    def __call__(self) -> tuple:
        self.calls += 1
        if self.succeed_first and self.calls == 1:
            return (ip_network("1.2.3.4/32"),)
        raise AttributeError("module 'socket' has no attribute 'AF_NETLINK'")


@pytest.fixture
def host_proxy(short_tmp) -> Iterator:
    """A proxy whose `self.test` resolves to 1.2.3.4; give it a HostAddresses, then start it."""
    root = Path(tempfile.mkdtemp(prefix="h-", dir=short_tmp))
    proxy = EgressProxy(root, upstream=UpstreamConfig(), test_hosts={"self.test": "1.2.3.4"})
    yield proxy
    proxy.stop()


def _timed_connect(path: Path) -> tuple[int, str, float]:
    began = time.monotonic()
    status, body, s = connect(path, "self.test:443")
    s.close()
    return status, body.decode().strip(), time.monotonic() - began


def test_a_slow_read_of_the_hosts_addresses_does_not_hold_up_connections(host_proxy):
    """The read ran on the proxy's loop once a second: a slow one (a full dump of large
    routing tables) held every sandbox's connections. Now they use the last set read."""
    reader = SlowReader((ip_network("1.2.3.4/32"),), slow_s=5)
    host_proxy.host_addresses = HostAddresses(max_age_s=0.05, reader=reader)
    try:
        host_proxy.start()
        path = host_proxy.sandbox_open("sb-1", network_parse({"allow": ["self.test"]}))
        answers = [_timed_connect(path)]
        # Keep connecting while a slow read is under way (the second read is the slow one).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline or reader.calls < 2:
            answers.append(_timed_connect(path))
            assert time.monotonic() < deadline + 5, "the slow read never started"
    finally:
        reader.release.set()
    assert {(status, body) for status, body, _ in answers} == {
        (403, "resolves to 1.2.3.4: this host's own address")
    }
    assert max(took for _, _, took in answers) < 0.5  # was 5 s: the slow read's length


def test_unreadable_host_addresses_refuse_every_address_with_the_reason(host_proxy):
    """Off Linux the read raises AttributeError (no AF_NETLINK), which dropped the connection
    with no answer; any failure to read is a refusal that says why."""
    host_proxy.host_addresses = HostAddresses(reader=FailingReader(succeed_first=False))
    host_proxy.start()
    path = host_proxy.sandbox_open("sb-1", network_parse({"allow": ["self.test"]}))
    status, body, _ = _timed_connect(path)
    assert status == 503
    assert body == (
        "this host's own addresses could not be read (AttributeError: module 'socket' has no "
        "attribute 'AF_NETLINK'): egress is refused"
    )


def test_host_addresses_last_read_too_long_ago_refuse_every_address(host_proxy):
    """The last set read stands in for a while (a slow or failed read); past `stale_s`
    nothing is admitted until a read succeeds again."""
    reader = FailingReader(succeed_first=True)
    host_proxy.host_addresses = HostAddresses(max_age_s=0.02, stale_s=0.3, reader=reader)
    host_proxy.start()
    path = host_proxy.sandbox_open("sb-1", network_parse({"allow": ["self.test"]}))
    _, body, _ = wait_for(
        lambda: (answer := _timed_connect(path))[0] == 503 and answer,
        timeout=10,
        what="a refusal once the last read is too old",
    )
    assert body.startswith("this host's own addresses were last read ")
    assert body.endswith(
        "s ago (AttributeError: module 'socket' has no attribute 'AF_NETLINK'): egress is refused"
    )
