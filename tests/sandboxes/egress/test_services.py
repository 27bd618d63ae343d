"""Egress through the sandbox services on a real engine (bubblewrap) and a real database: the
socket is opened at create and closed at terminate, every connection is an audit event, a
refusal is a line in the sandbox's log, forks get sockets of their own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from sandboxes.backends.base import Capability, NetworkPolicy, SandboxSpec
from sandboxes.egress import worker
from sandboxes.egress.sandbox import (
    ACTION_ALLOWED,
    ACTION_REFUSED,
    egress_attach,
    sandbox_egress_stats,
    sandbox_key,
)
from sandboxes.models import LogLine, Sandbox
from sandboxes.reaper import sandboxes_reap
from sandboxes.services import (
    sandbox_create,
    sandbox_exec,
    sandbox_fork,
    sandbox_snapshot,
    sandbox_terminate,
)
from tests.sandboxes.fake_modal import modal_fake_backend
from tests.support import wait_for

pytestmark = [
    pytest.mark.shapes("embedded", "production"),
    pytest.mark.django_db(transaction=True),
]

GET = """\
import socket, sys
# Each URL through the proxy, 127.0.0.1 too (urllib would honour NO_PROXY and go direct).
for url in sys.argv[1:]:
    hostport = url.split("/")[2]
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(f"GET {url} HTTP/1.1\\r\\nHost: {hostport}\\r\\n\\r\\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    print(url, data.decode(errors="replace").replace("\\r\\n", " "))
"""


@pytest.fixture
def test_proxy(monkeypatch):
    """This process's egress proxy with the test-only name mapping (api.test → 127.0.0.1)."""
    monkeypatch.setenv(worker.TEST_HOSTS_VAR, "api.test=127.0.0.1")
    worker.egress_proxy_stop()
    yield
    worker.egress_proxy_stop()


def _spec(port: int) -> SandboxSpec:
    return SandboxSpec(
        timeout_s=300,
        memory_mb=256,
        network=NetworkPolicy.ALLOWLIST,
        allowed_domains=(f"api.test:{port}",),
        egress_mb=5,
    )


def _events(sandbox, action):
    rows = AuditEvent.objects.filter(sandbox_id=sandbox.pk, action=action).order_by("id")
    return [json.loads(body) for body in rows.values_list("body", flat=True)]


def test_create_opens_the_socket_connections_are_audited_terminate_closes_it(
    test_proxy, http_upstream, manager, admin_user, client, engines_clean
):
    port = http_upstream.port
    sandbox = sandbox_create(spec=_spec(port), backend="bwrap", on_behalf_of=manager, run_id=9)
    assert sandbox.network == "allowlist"
    assert sandbox.limits["network_allow"] == [f"api.test:{port}"]
    proxy = worker.egress_proxy()
    assert sandbox_key(sandbox) in proxy.sandbox_keys()
    urls = [f"http://api.test:{port}/hello", "http://127.0.0.1:5432/", "http://other.test/"]
    command = sandbox_exec(sandbox=sandbox, argv=["python3", "-c", GET, *urls])
    assert command.exit_code == 0
    out = "".join(LogLine.objects.filter(command=command).values_list("text", flat=True))
    assert "hello from upstream" in out

    wait_for(lambda: len(_events(sandbox, ACTION_REFUSED)) >= 2, timeout=10, what="refusals")
    allowed = _events(sandbox, ACTION_ALLOWED)
    assert [(e["payload"]["host"], e["outcome"]) for e in allowed] == [("api.test", "success")]
    assert allowed[0]["actor"]["on_behalf_of"] == manager.username
    assert allowed[0]["context"]["run_id"] == 9
    assert allowed[0]["payload"]["bytes_down"] > 0
    refused = {e["payload"]["host"]: e["reason"] for e in _events(sandbox, ACTION_REFUSED)}
    assert refused == {"127.0.0.1": "loopback", "other.test": "not in network.allow"}
    wait_for(  # the last refusal's line (each is written just after its audit event)
        lambda: (
            "egress refused: other.test:80 (not in network.allow)"
            in LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True)
        ),
        timeout=10,
        what="the refusals' log lines",
    )
    lines = list(LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True))
    assert "egress refused: 127.0.0.1:5432 (loopback)" in lines
    stats = sandbox_egress_stats(sandbox=sandbox)
    assert stats.summary() == "egress: 3 connections to 3 hosts, 2 refused"

    client.force_login(admin_user)
    page = client.get(reverse("sandbox-detail", args=[sandbox.pk])).content.decode()
    assert f"only <code>api.test:{port}</code>" in page
    assert "egress: 3 connections to 3 hosts, 2 refused" in page
    assert f"q=action:sandbox.egress.refused%20sandbox:{sandbox.pk}" in page
    found = client.get(
        reverse("audit:events"), {"q": f"action:sandbox.egress.refused sandbox:{sandbox.pk}"}
    ).content.decode()
    assert found.count('data-testid="audit-row"') == 2
    event = AuditEvent.objects.get(
        sandbox_id=sandbox.pk, action=ACTION_REFUSED, body__contains="5432"
    )
    detail = client.get(reverse("audit:event", args=[event.event_id])).content.decode()
    assert "loopback" in detail and "127.0.0.1" in detail

    socket_path = Path(proxy.root) / next(p.name for p in Path(proxy.root).iterdir())
    sandbox_terminate(sandbox=sandbox, reason="done")
    assert sandbox_key(sandbox) not in proxy.sandbox_keys()
    assert not socket_path.exists()


def test_forks_get_sockets_of_their_own(test_proxy, http_upstream, engines_clean):
    spec = _spec(http_upstream.port)
    source = sandbox_create(spec=spec, backend="bwrap")
    snapshot = sandbox_snapshot(sandbox=source)
    forks = sandbox_fork(snapshot=snapshot, count=2, spec=spec)
    keys = worker.egress_proxy().sandbox_keys()
    assert {sandbox_key(s) for s in [source, *forks]} <= set(keys)
    for fork in forks:
        command = sandbox_exec(
            sandbox=fork,
            argv=["python3", "-c", GET, f"http://api.test:{http_upstream.port}/hello"],
        )
        assert command.exit_code == 0
        wait_for(lambda f=fork: _events(f, ACTION_ALLOWED), timeout=10, what="the fork's event")
    for sandbox in [source, *forks]:
        sandbox_terminate(sandbox=sandbox, reason="done")
    assert not set(worker.egress_proxy().sandbox_keys()) & {sandbox_key(s) for s in forks}


def test_engines_without_the_proxy_get_the_hosts_index_names(monkeypatch):
    """Modal, E2B and Daytona enforce names themselves: package_indexes adds the host's."""

    class CloudEngine:
        capabilities = Capability.NETWORK_ALLOWLIST

    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.mirror.test/simple")
    spec = SandboxSpec(
        network=NetworkPolicy.ALLOWLIST, allowed_domains=("api.example.com",), package_indexes=True
    )
    out = egress_attach(spec, CloudEngine(), sandbox=None)
    assert out.allowed_domains[:2] == ("api.example.com", "pypi.mirror.test")
    assert out.egress_socket is None
    none = SandboxSpec()
    assert egress_attach(none, CloudEngine(), sandbox=None) is none


def test_the_reaper_closes_the_sockets_of_what_it_reaps(
    test_proxy, http_upstream, settings, engines_clean
):
    sandbox = sandbox_create(spec=_spec(http_upstream.port), backend="bwrap")
    proxy = worker.egress_proxy()
    assert sandbox_key(sandbox) in proxy.sandbox_keys()
    Sandbox.objects.filter(pk=sandbox.pk).update(deadline_at=timezone.now())
    dead = Path(settings.DATA_DIR) / "egress" / "999999999"  # a worker pid that is gone
    dead.mkdir(parents=True)
    sandboxes_reap()
    assert sandbox_key(sandbox) not in proxy.sandbox_keys()
    assert not dead.exists()
    assert (Path(settings.DATA_DIR) / "egress" / str(os.getpid())).exists()  # this one lives


def test_modal_gets_names_without_ports(tmp_path):
    """What README's table says for Modal: an entry's port is dropped (Modal has none)."""
    with modal_fake_backend(tmp_path) as backend:
        backend.create(
            SandboxSpec(
                network=NetworkPolicy.ALLOWLIST,
                allowed_domains=("api.example.com", "git.example.com:22", "git.example.com"),
            )
        )
        (call,) = backend.fake.create_calls
    assert call["outbound_domain_allowlist"] == ["api.example.com", "git.example.com"]
