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
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.shapes("embedded", "production")

SCRIPT = r"""
import http.server, json, os, socket, sys, tempfile, threading
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
out = {"networks": [str(n) for n in host_networks_read()]}
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


def _in_namespace() -> dict:
    setup = (
        "ip link set lo up && ip addr add 1.2.3.4/32 dev lo && "
        'ip -6 addr add 2a00:1450:4001::1234/128 dev lo nodad && exec "$0" -c "$1"'
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_VERSION"}
    env = {k: v for k, v in env.items() if not k.startswith("CONVOY_")}
    env.update(CONVOY_DATA_DIR=str(settings.DATA_DIR), SECRET_KEY=settings.SECRET_KEY)
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", setup, sys.executable, SCRIPT],
        cwd=Path(settings.BASE_DIR),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def answers() -> dict:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a network namespace")
    return _in_namespace()


def test_the_proxy_reads_the_hosts_own_addresses_from_the_kernel(answers):
    assert {"1.2.3.4/32", "2a00:1450:4001::1234/128", "127.0.0.0/8"} <= set(answers["networks"])


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
