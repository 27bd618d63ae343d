"""Egress through the sandbox services on a real engine (bubblewrap) and a real database: the
socket is opened at create and closed at terminate, every connection is an audit event, a
refusal is a line in the sandbox's log, forks get sockets of their own."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from sandboxes.backends.base import Capability, NetworkPolicy, SandboxSpec
from sandboxes.egress import worker
from sandboxes.egress.events import EgressEvent
from sandboxes.egress.policy import network_parse
from sandboxes.egress.sandbox import (
    ACTION_ALLOWED,
    ACTION_REFUSED,
    ACTION_UNRECORDED,
    _EgressWriter,
    _writer,
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


PIPELINED = """\
import socket, sys
# Two requests on one connection: the first to the allowed name, the second to another.
allowed, other = sys.argv[1:]
s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
s.sendall(
    f"GET http://{allowed}/first HTTP/1.1\\r\\nHost: {allowed}\\r\\n\\r\\n"
    f"GET http://{other}/second HTTP/1.1\\r\\nHost: {other}\\r\\n\\r\\n".encode()
)
data = b""
try:
    while chunk := s.recv(65536):
        data += chunk
except TimeoutError:  # a connection left open: what came by then
    pass
print(data.decode(errors="replace").replace("\\r\\n", " "))
"""


def test_a_second_request_on_one_connection_is_refused_and_audited(
    test_proxy, keepalive_origin, engines_clean
):
    port = keepalive_origin.port
    sandbox = sandbox_create(spec=_spec(port), backend="bwrap")
    argv = ["python3", "-c", PIPELINED, f"api.test:{port}", "other.test"]
    command = sandbox_exec(sandbox=sandbox, argv=argv)
    assert command.exit_code == 0
    out = "".join(LogLine.objects.filter(command=command).values_list("text", flat=True))
    assert f"served host=api.test:{port} path=/first" in out
    assert "served host=other.test" not in out
    assert [seen[0] for seen in keepalive_origin.server.seen] == [f"api.test:{port}"]
    wait_for(lambda: _events(sandbox, ACTION_REFUSED), timeout=10, what="the refusal's event")
    (refused,) = _events(sandbox, ACTION_REFUSED)
    assert (refused["payload"]["host"], refused["reason"]) == ("other.test", "not in network.allow")
    wait_for(
        lambda: (
            "egress refused: other.test:80 (not in network.allow)"
            in LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True)
        ),
        timeout=10,
        what="the refusal's log line",
    )
    sandbox_terminate(sandbox=sandbox, reason="done")


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


def _flood(path: Path, target: str, count: int) -> None:
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        while s.recv(65536):
            pass
        s.close()


def test_a_flood_of_refusals_is_collapsed_per_target_and_every_refusal_counted(proxy):
    """One sandbox made ~7,500 refusals a second, each an audit event and a log line, against a
    writer doing ~660 a second: its queue grew in the worker's memory. Past the first ones of
    a window, refusals are counted and written as one event per target."""
    sandbox = Sandbox.objects.create(backend="bwrap", network="allowlist")
    writer = _writer()
    path = proxy.sandbox_open(
        sandbox_key(sandbox), network_parse("none"), on_event=writer.callback(sandbox)
    )
    _flood(path, "127.0.0.1:5432", 300)
    _flood(path, "other.test:443", 10)
    writer.flush(timeout=30)

    refused = _events(sandbox, ACTION_REFUSED)
    assert len(refused) < 60  # was 310
    counts = [e["payload"].get("count", 1) for e in refused]
    assert sum(counts) == 310
    full = [e for e in refused if "count" not in e["payload"]]
    assert full[0]["payload"]["host"] == "127.0.0.1" and full[0]["reason"] == "loopback"
    (loopback,) = [e for e in refused if e["payload"].get("count") and e["payload"]["port"] == 5432]
    payload = loopback["payload"]
    assert (payload["host"], payload["code"], payload["reason"]) == (
        "127.0.0.1",
        "address",
        "loopback",
    )
    assert payload["address"] == "127.0.0.1" and payload["first_at"] <= payload["last_at"]
    assert loopback["reason"].startswith(f"{payload['count']} more refusals of 127.0.0.1:5432 in ")
    assert loopback["outcome"] == "denied"
    lines = list(LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True))
    assert len(lines) == len(refused)
    assert f"egress: {loopback['reason']}" in lines
    assert sandbox_egress_stats(sandbox=sandbox).summary() == (
        "egress: 310 connections to 2 hosts, 310 refused"
    )


def test_events_the_writer_cannot_keep_up_with_are_counted_and_recorded():
    sandbox = Sandbox.objects.create(backend="bwrap", network="allowlist")
    writer = _EgressWriter(maxsize=10, start=False)  # a writer that has fallen behind
    on_event = writer.callback(sandbox)
    for i in range(50):
        on_event(
            EgressEvent(
                sandbox_key=sandbox_key(sandbox),
                method="CONNECT",
                host="api.test",
                port=443,
                allowed=True,
                code="ok",
                status=200,
                started_at=1000.0 + i,
            )
        )
    assert writer.queue.qsize() == 10
    writer.thread.start()
    writer.flush(timeout=30)

    assert len(_events(sandbox, ACTION_ALLOWED)) == 10
    (unrecorded,) = _events(sandbox, ACTION_UNRECORDED)
    assert unrecorded["payload"]["count"] == 40 and unrecorded["payload"]["hosts"] == ["api.test"]
    assert (unrecorded["payload"]["first_at"], unrecorded["payload"]["last_at"]) == (1010.0, 1049.0)
    assert unrecorded["reason"].startswith("40 egress events (0 refused) not recorded")
    line = LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True).get()
    assert line == f"egress: {unrecorded['reason']}"
    assert sandbox_egress_stats(sandbox=sandbox).summary() == (
        "egress: 50 connections to 1 host, 0 refused"
    )
