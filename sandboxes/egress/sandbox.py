"""Egress for one sandbox: what the services layer does around the engine's create and terminate.

`spec_network_fields` turns a campaign's normalised `network:` value into SandboxSpec fields
(plain values: campaigns never hand sandboxes a policy object). `egress_attach` gives the engine
the spec it runs: on engines with Capability.EGRESS_PROXY the allowlist becomes a socket of
this process's proxy (opened here, keyed by the sandbox); on other engines the host's package
indexes become names of the engine's own allowlist. `egress_release` closes the socket.
Each connection the proxy reports becomes an audit event, written by one writer thread (the
proxy's thread never touches the database); refusals also get a line in the sandbox's log.
Past the first refusals of a window, a sandbox's refusals are counted and written as one event
per target (`RefusalGate`), and the writer's queue is bounded: what it drops is counted and
written as an event of its own, so the trail says what it is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, transaction

from audit.models import AuditEvent
from audit.record import audit_record
from sandboxes.backends.base import Capability, NetworkPolicy, SandboxBackend, SandboxSpec
from sandboxes.egress.events import (
    CollapsedRefusals,
    EgressEvent,
    EgressStats,
    RefusalGate,
    UnrecordedEvents,
    is_refusal,
)
from sandboxes.egress.packages import (
    package_client_env,
    package_client_files,
    package_index_rules,
    package_indexes_read,
)
from sandboxes.egress.policy import DEFAULT_PORTS, Limits, network_parse
from sandboxes.egress.worker import egress_proxy, egress_proxy_if_running
from sandboxes.logs import log_system_line
from sandboxes.models import Sandbox, SandboxState

log = logging.getLogger(__name__)

ACTION_ALLOWED = "sandbox.egress.allowed"
ACTION_REFUSED = "sandbox.egress.refused"
# Events the writer could not keep up with: their count, per sandbox.
ACTION_UNRECORDED = "sandbox.egress.unrecorded"
# Queued events waiting for the writer (~1 KB each): past this they are counted, not kept.
QUEUE_MAX = 10_000
_LIVE = (SandboxState.CREATING, SandboxState.RUNNING)


def spec_network_fields(network: object, *, egress_mb: int = 1024) -> dict:
    """SandboxSpec keyword arguments for a normalised `network:` value ("none" or a mapping)."""
    policy = network_parse(network, field_name="network")
    if policy.blocks_all and not policy.package_indexes:
        return {"network": NetworkPolicy.NONE, "egress_mb": egress_mb}
    return {
        "network": NetworkPolicy.ALLOWLIST,
        "allowed_domains": tuple(allowed_domains(policy.rules)),
        "package_indexes": policy.package_indexes,
        "egress_mb": egress_mb,
    }


def allowed_domains(rules) -> list[str]:
    """Rules as `SandboxSpec.allowed_domains` entries: `name` (ports 443 and 80) or `name:port`."""
    out: list[str] = []
    for rule in rules:
        if rule.ports == DEFAULT_PORTS:
            out.append(rule.pattern)
        else:
            out += [f"{rule.pattern}:{port}" for port in sorted(rule.ports)]
    return list(dict.fromkeys(out))


def sandbox_key(sandbox: Sandbox) -> str:
    return sandbox_key_for(sandbox.pk)


def sandbox_key_for(sandbox_id: int) -> str:
    """The proxy's key of a sandbox: its socket's name, and who is calling on identified routes."""
    return f"sandbox-{sandbox_id}"


def egress_wanted(spec: SandboxSpec) -> bool:
    return spec.network == NetworkPolicy.ALLOWLIST


def egress_attach(spec: SandboxSpec, engine: SandboxBackend, *, sandbox: Sandbox) -> SandboxSpec:
    """The spec the engine gets for `sandbox` (unchanged without an allowlist)."""
    if not egress_wanted(spec):
        return spec
    indexes = package_indexes_read() if spec.package_indexes else None
    index_rules = package_index_rules(indexes) if indexes is not None else []
    if Capability.EGRESS_PROXY not in engine.capabilities:
        # The engine enforces names itself (Modal, E2B, Daytona): no events, no byte limit.
        domains = [*spec.allowed_domains, *allowed_domains(index_rules)]
        return replace(spec, allowed_domains=tuple(dict.fromkeys(domains)))
    policy = network_parse({"allow": list(spec.allowed_domains)}, field_name="network")
    policy = policy.with_rules(index_rules)
    proxy = egress_proxy()
    _stale_close(proxy)
    socket_path = proxy.sandbox_open(
        sandbox_key(sandbox),
        policy,
        Limits(egress_mb=spec.egress_mb),
        on_event=_writer().callback(sandbox),
    )
    return replace(
        spec,
        network=NetworkPolicy.NONE,
        allowed_domains=(),
        egress_socket=str(socket_path),
        egress_env=package_client_env(indexes) if indexes is not None else {},
        egress_files=tuple(str(p) for p in package_client_files(indexes)) if indexes else (),
    )


def egress_release(sandbox: Sandbox) -> None:
    """Close the sandbox's socket (its open connections end and are reported), wait for their
    audit events, and remove its socket directory wherever a worker made it; idempotent. A
    sandbox made without an allowlist never had either."""
    if sandbox.network != NetworkPolicy.ALLOWLIST:
        return
    key = sandbox_key(sandbox)
    proxy = egress_proxy_if_running()
    if proxy is not None and key in proxy.sandbox_keys():
        proxy.sandbox_close(key)
        _writer().flush(timeout=10)
    # Made by another worker process: without its directory no new connection reaches it.
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    for directory in (Path(settings.DATA_DIR) / "egress").glob(f"[0-9]*/{name}"):
        shutil.rmtree(directory, ignore_errors=True)


def _stale_close(proxy) -> None:
    """Close this proxy's sockets of sandboxes that ended elsewhere (terminated by the reaper or
    a person in another process)."""
    keys = {k: int(k.rpartition("-")[2]) for k in proxy.sandbox_keys() if k.startswith("sandbox-")}
    if not keys:
        return
    live = set(
        Sandbox.objects.filter(pk__in=keys.values(), state__in=_LIVE).values_list("pk", flat=True)
    )
    for key, pk in keys.items():
        if pk not in live:
            proxy.sandbox_close(key)


def sandbox_egress_stats(*, sandbox: Sandbox, limit: int = 10_000) -> EgressStats | None:
    """The sandbox's egress totals from its audit events (any process can read them); None when
    the sandbox had no egress proxy (no network, or an engine that reports no connections)."""
    rows = AuditEvent.objects.filter(
        sandbox_id=sandbox.pk, action__in=(ACTION_ALLOWED, ACTION_REFUSED, ACTION_UNRECORDED)
    ).values_list("action", "body")[:limit]
    stats = EgressStats()
    for action, body in rows:
        try:
            payload = json.loads(body)["payload"]
        except (ValueError, KeyError, TypeError):
            payload = {}
        count = payload.get("count", 1)  # collapsed refusals and unrecorded events
        stats.connections += count
        if action == ACTION_UNRECORDED:
            stats.refused += payload.get("refused", 0)
            stats.hosts.update(payload.get("hosts", []))
            continue
        stats.refused += count if action == ACTION_REFUSED else 0
        with contextlib.suppress(KeyError, TypeError):
            if payload["host"]:
                stats.hosts.add(payload["host"])
            stats.bytes_total += payload["bytes_up"] + payload["bytes_down"]
    return stats


# --- the audit writer -----------------------------------------------------------------------


@dataclass
class _Gate:
    gate: RefusalGate
    ctx: dict
    on_behalf_of: str


@dataclass
class _Dropped(UnrecordedEvents):
    """Events of one sandbox the writer's full queue could not take."""

    ctx: dict = field(default_factory=dict)
    on_behalf_of: str = ""
    sandbox_key: str = ""


class _EgressWriter:
    """One thread per process that writes the proxy's events to the audit trail (and refusals
    to the sandbox's log), in the order the proxy reported them. Refusals pass each sandbox's
    RefusalGate first (in the proxy's thread: a dict lookup under a lock); the queue is
    bounded, and what it had to drop is written as one ACTION_UNRECORDED event per sandbox."""

    def __init__(self, *, maxsize: int = QUEUE_MAX, start: bool = True) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._gates: dict[int, _Gate] = {}
        self._dropped: dict[int, _Dropped] = {}
        self.thread = threading.Thread(target=self._run, name="egress-audit", daemon=True)
        if start:
            self.thread.start()

    def callback(self, sandbox: Sandbox):
        ctx = {
            "sandbox_id": sandbox.pk,
            "campaign_id": sandbox.campaign_id,
            "run_id": sandbox.run_id,
            "variant_id": sandbox.variant_id,
        }
        person = sandbox.on_behalf_of
        on_behalf_of = person.get_username() if person is not None else ""

        def on_event(event: EgressEvent) -> None:
            if is_refusal(event):
                with self._lock:
                    entry = self._gates.get(sandbox.pk)
                    if entry is None:
                        entry = self._gates[sandbox.pk] = _Gate(RefusalGate(), ctx, on_behalf_of)
                    if not entry.gate.admit(event, time.monotonic()):
                        return  # counted: written with its window's summary
            try:
                self.queue.put_nowait((ctx, on_behalf_of, event))
            except queue.Full:
                with self._lock:
                    dropped = self._dropped.get(sandbox.pk)
                    if dropped is None:
                        dropped = _Dropped(
                            ctx=ctx, on_behalf_of=on_behalf_of, sandbox_key=event.sandbox_key
                        )
                        self._dropped[sandbox.pk] = dropped
                    dropped.add(event)

        return on_event

    def flush(self, *, timeout: float) -> None:
        """Wait until every event queued so far is written, with the refusals counted so far
        and the count of any dropped."""
        done = threading.Event()
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self.queue.put(done, timeout=timeout)
            done.wait(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        next_tick = time.monotonic() + 1
        while True:
            try:
                item = self.queue.get(timeout=1)
            except queue.Empty:
                item = None
            if isinstance(item, threading.Event):
                self._pending_record(force=True)
                item.set()
                continue
            if item is not None:
                try:
                    close_old_connections()
                    egress_event_record(*item)
                except Exception:
                    log.exception("could not record an egress event")
            if time.monotonic() >= next_tick:
                self._pending_record(force=False)
                next_tick = time.monotonic() + 1

    def _pending_record(self, *, force: bool) -> None:
        """Write the summaries of windows that ended (all counted so far with `force`) and the
        counts of dropped events."""
        now = time.monotonic()
        with self._lock:
            summaries = [
                (entry.ctx, entry.on_behalf_of, summary)
                for entry in self._gates.values()
                for summary in entry.gate.due(now, force=force)
            ]
            dropped, self._dropped = self._dropped, {}
            for pk in [pk for pk, e in self._gates.items() if e.gate.idle(now, 600)]:
                del self._gates[pk]
        if not summaries and not dropped:
            return
        try:
            close_old_connections()
            for ctx, on_behalf_of, summary in summaries:
                egress_collapsed_record(ctx, on_behalf_of, summary)
            for d in dropped.values():
                egress_unrecorded_record(d)
        except Exception:
            log.exception("could not record collapsed or dropped egress events")


def egress_event_record(ctx: dict, on_behalf_of, event: EgressEvent) -> None:
    """One audit event per connection; a refusal (or a failed connection) also gets its log line."""
    with transaction.atomic():
        audit_record(
            action=ACTION_ALLOWED if event.allowed else ACTION_REFUSED,
            actor_type="agent",
            on_behalf_of=on_behalf_of,
            target=_target(ctx),
            outcome="success" if event.allowed and event.status < 400 else "denied",
            context=ctx,
            reason=event.reason[:500],
            payload=event.as_dict(),
        )
    if is_refusal(event):
        sandbox = Sandbox.objects.filter(pk=ctx["sandbox_id"]).first()
        if sandbox is not None:
            log_system_line(sandbox=sandbox, text=event.log_line())


def _target(ctx: dict) -> dict:
    return {
        "type": "sandboxes.sandbox",
        "id": str(ctx["sandbox_id"]),
        "display": f"sandbox {ctx['sandbox_id']}",
    }


def egress_collapsed_record(ctx: dict, on_behalf_of, summary: CollapsedRefusals) -> None:
    """One audit event (and log line) for refusals of one target counted past the gate: the
    payload is the first one's, with `count`, `first_at`, `last_at` (and `targets`)."""
    with transaction.atomic():
        audit_record(
            action=ACTION_ALLOWED if summary.first.allowed else ACTION_REFUSED,
            actor_type="agent",
            on_behalf_of=on_behalf_of,
            target=_target(ctx),
            outcome="denied",
            context=ctx,
            reason=summary.text()[:500],
            payload=summary.as_dict(),
        )
    sandbox = Sandbox.objects.filter(pk=ctx["sandbox_id"]).first()
    if sandbox is not None:
        log_system_line(sandbox=sandbox, text=summary.log_line())


def egress_unrecorded_record(dropped: _Dropped) -> None:
    """The count of a sandbox's events the writer's full queue dropped."""
    text = dropped.text()
    with transaction.atomic():
        audit_record(
            action=ACTION_UNRECORDED,
            actor_type="agent",
            on_behalf_of=dropped.on_behalf_of,
            target=_target(dropped.ctx),
            outcome="error",
            context=dropped.ctx,
            reason=text,
            payload={"sandbox": dropped.sandbox_key, **dropped.as_dict()},
        )
    sandbox = Sandbox.objects.filter(pk=dropped.ctx["sandbox_id"]).first()
    if sandbox is not None:
        log_system_line(sandbox=sandbox, text=f"egress: {text}")


_writer_lock = threading.Lock()
_writer_instance: _EgressWriter | None = None


def _writer() -> _EgressWriter:
    global _writer_instance
    with _writer_lock:
        if _writer_instance is None or not _writer_instance.thread.is_alive():
            _writer_instance = _EgressWriter()
        return _writer_instance
