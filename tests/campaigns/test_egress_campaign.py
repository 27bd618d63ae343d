"""Acceptance of controlled egress (issue 15), production shape: a campaign with
`network: {package_indexes: true}` installs from this host's package indexes inside bwrap and
gVisor sandboxes, through the egress proxy, while the same sandboxes cannot open TCP to the
host's PostgreSQL, Redis or Convoy port, nor to the cloud metadata address; the refusals are
in the audit trail and the sandbox's log with their reasons."""

import json
import re
import shutil

import pytest
from django.conf import settings

from audit.models import AuditEvent
from campaigns.models import Variant, VariantState
from campaigns.services import campaign_create, campaign_launch
from sandboxes.egress.packages import package_index_rules, package_indexes_read
from sandboxes.egress.sandbox import ACTION_ALLOWED, ACTION_REFUSED
from sandboxes.models import LogLine, Sandbox
from tests.factories import repos_make, runs_final
from tests.package_indexes import host_index_addresses

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


# Run inside the sandbox: each target directly, then through the proxy (CONNECT).
PROBE = """\
import os, socket, sys
proxy = ("127.0.0.1", 3128)
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print("direct", target, "OPEN")
    except OSError as e:
        print("direct", target, "blocked", type(e).__name__)
    s = socket.create_connection(proxy, timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
    answer = s.recv(4096).decode(errors="replace").splitlines()
    print("proxy", target, answer[0] if answer else "", "|", answer[-1] if answer else "")
    s.close()
"""


def _host_index_addresses() -> str:
    """What this host's operator would set (tests/package_indexes.py). Skips without npm and
    the system pip (what a sandbox on the host's /usr runs) or when no index answers."""
    if not shutil.which("npm") or not shutil.which("pip", path="/usr/bin"):
        pytest.skip("needs npm and the system pip (what a sandbox on the host's /usr runs)")
    trusted, reached = host_index_addresses()
    if not reached:
        pytest.skip("this host reaches none of its own package indexes (offline?)")
    return trusted


@pytest.fixture
def index_addresses(monkeypatch):
    """Set before the worker starts (it inherits this process's environment)."""
    value = _host_index_addresses()
    if value:
        monkeypatch.setenv("CONVOY_EGRESS_INDEX_ADDRESSES", value)
    return value


def _spec(tag: str, backend: str, convoy_port: int) -> str:
    probe = "".join(f"    {line}\n" for line in PROBE.splitlines())
    targets = f"127.0.0.1:5432 127.0.0.1:6379 127.0.0.1:{convoy_port} 169.254.169.254:80"
    return f"""\
name: egress-{backend}
backend: {backend}
repos: {{tag: {tag}}}
limits: {{timeout_s: 600, cpu: 1, memory_mb: 1024, egress_mb: 200}}
network: {{package_indexes: true}}
files:
  probe.py: |
{probe}transform:
  run: |
    export HOME=/tmp
    out=egress.txt
    pip download --no-deps --no-cache-dir -d /tmp/dl six >/tmp/pip.log 2>&1; echo "pip=$?" >$out
    grep -o "Saved /tmp/dl/six-[^ ]*" /tmp/pip.log >>$out || tail -20 /tmp/pip.log >>$out
    v=$(npm view left-pad version --cache /tmp/npm 2>/tmp/npm.log); echo "npm=$? $v" >>$out
    tail -5 /tmp/npm.log >>$out
    python3 $CONVOY_FILES/probe.py {targets} >>$out 2>&1
"""


@pytest.mark.parametrize("backend", ["bwrap", "gvisor"])
def test_package_indexes_reachable_host_services_not(
    backend, index_addresses, asgi_server, manager
):
    if settings.EMBEDDED:
        pytest.skip("the acceptance test runs in the production shape (a real Celery worker)")
    if not shutil.which({"bwrap": "bwrap", "gvisor": "runsc"}[backend]):
        pytest.skip(f"the {backend} engine is not installed here")
    convoy_port = int(asgi_server.rsplit(":", 1)[1])
    tag, _paths = repos_make(1)
    campaign = campaign_create(actor=manager, source=_spec(tag, backend, convoy_port))
    campaign_launch(campaign=campaign, actor=manager)
    runs_final(campaign, timeout=540)

    variant = Variant.objects.get(run__campaign=campaign)
    assert variant.state == VariantState.COMPLETED, (variant.error, variant.output_tail)
    out = variant.diff
    assert "+pip=0" in out and "+Saved /tmp/dl/six-" in out, out
    assert re.search(r"^\+npm=0 \d+\.\d+\.\d+$", out, re.MULTILINE), out
    targets = ["127.0.0.1:5432", "127.0.0.1:6379", f"127.0.0.1:{convoy_port}", "169.254.169.254:80"]
    for target in targets:
        assert f"+direct {target} blocked" in out, out
        assert f"+proxy {target} HTTP/1.1 403 Forbidden" in out, out
    assert "+proxy 169.254.169.254:80 HTTP/1.1 403 Forbidden | link-local (cloud metadata)" in out

    sandboxes = list(Sandbox.objects.filter(campaign_id=campaign.pk).values_list("pk", flat=True))
    events = AuditEvent.objects.filter(sandbox_id__in=sandboxes)
    refused = {}
    for body in events.filter(action=ACTION_REFUSED).values_list("body", flat=True):
        event = json.loads(body)
        refused[f"{event['payload']['host']}:{event['payload']['port']}"] = event["reason"]
    assert refused["127.0.0.1:5432"] == "loopback"
    assert refused["127.0.0.1:6379"] == "loopback"
    assert refused[f"127.0.0.1:{convoy_port}"] == "loopback"
    assert refused["169.254.169.254:80"] == "link-local (cloud metadata)"
    allowed = [
        json.loads(b) for b in events.filter(action=ACTION_ALLOWED).values_list("body", flat=True)
    ]
    index_hosts = {r.pattern for r in package_index_rules(package_indexes_read())}
    reached = {e["payload"]["host"] for e in allowed if e["payload"]["bytes_down"] > 0}
    assert len(reached) >= 2 and reached <= index_hosts, (reached, index_hosts)  # pip's and npm's
    lines = LogLine.objects.filter(sandbox_id__in=sandboxes).values_list("text", flat=True)
    assert "egress refused: 127.0.0.1:5432 (loopback)" in list(lines)
