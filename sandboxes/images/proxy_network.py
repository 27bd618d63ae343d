"""Image builds through the egress proxy: the `BuildNetwork` every build uses (docs/images.md).

Each build gets its own socket of this process's egress proxy, keyed `image-<key>-<token>`,
with the policy: the host's package indexes (and a Debian image's own apt sources), plus the
allow list of the campaign whose run triggered the build (none for `manage.py image build`).
Build steps run with no network but
loopback; the relay inside turns the socket into 127.0.0.1:3128 and the proxy variables point
pip, npm, curl and git there; apt gets the same proxy through `/etc/apt/apt.conf.d/`. Every
connection is an audit event attributed to the image (target `sandboxes.image`, payload
`image_key`); refusals also go to the build log. As for sandboxes, past the first refusals of
a window they are counted per target and written as one event each (`RefusalGate`), and a
build keeps at most `TRAIL_MAX` events between steps: the rest are counted and written as one
`sandbox.egress.unrecorded` event.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from django.db import transaction

from audit.record import audit_record
from sandboxes.backends.egress import EGRESS_EXEC, egress_wrapped
from sandboxes.egress.events import EgressEvent, RefusalGate, UnrecordedEvents, is_refusal
from sandboxes.egress.packages import (
    PackageIndexes,
    apt_proxy_conf,
    package_index_rules,
    package_indexes_read,
    sandbox_proxy_env,
)
from sandboxes.egress.policy import Limits, NetworkPolicy, network_parse
from sandboxes.egress.relay import (
    SANDBOX_PROXY_PORT,
    SANDBOX_RELAY_PATH,
    SANDBOX_SOCKET_DIR,
    relay_binary,
)
from sandboxes.egress.sandbox import (
    ACTION_ALLOWED,
    ACTION_REFUSED,
    ACTION_UNRECORDED,
    allowed_domains,
)
from sandboxes.egress.worker import egress_proxy
from sandboxes.images.network import BuildNetwork, NetworkAttachment
from sandboxes.models import Image

log = logging.getLogger(__name__)

APT_PROXY_FILE = "/etc/apt/apt.conf.d/99convoy-proxy"
# How long a failed step's last connections may take to be reported after the step exits.
SETTLE_S = 5.0
# Events of one build kept until its step ends (~1 KB each): past this they are counted.
TRAIL_MAX = 10_000


def network_allow(network: object) -> tuple[str, ...]:
    """The allow list of a normalised `network:` value ("none" or {allow: [...], …}) as
    `name` / `name:port` entries; () for none."""
    return tuple(allowed_domains(network_parse(network, field_name="network").rules))


def proxy_network(
    *, allow: Sequence[str] = (), actor=None, context: Mapping[str, int] | None = None
) -> BuildNetwork:
    """A BuildNetwork through this process's egress proxy: the host's package indexes and
    `allow` (`name` or `name:port`). Connections are audited with `actor` as the person the
    build is for and `context` (campaign_id, run_id) when a campaign's run triggered it."""
    policy = network_parse({"allow": list(allow)}, field_name="network")

    def network(key: str, *, index_urls: Sequence[str] = ()):
        return _attached(key, policy, actor, dict(context or {}), index_urls)

    return network


@contextlib.contextmanager
def _attached(
    key: str, policy: NetworkPolicy, actor, context: dict, index_urls: Sequence[str]
) -> Iterator[NetworkAttachment]:
    policy = policy.with_rules(package_index_rules(package_indexes_read()))
    # The apt sources the base wrote into a Debian image (mmdebstrap's mirrors for the suite):
    # chosen by the builder, not the spec, so they count as package indexes too.
    policy = policy.with_rules(package_index_rules(PackageIndexes(apt_uris=list(index_urls))))
    relay = relay_binary()
    proxy = egress_proxy()
    proxy_key = f"image-{key[:16]}-{secrets.token_hex(4)}"
    trail = _BuildTrail(key, actor, context)
    socket_path = proxy.sandbox_open(proxy_key, policy, Limits(), on_event=trail.add)

    def after_step(failed: bool) -> list[str]:
        if failed:
            _settle(proxy, proxy_key, policy, trail)
        return trail.record()

    try:
        yield NetworkAttachment(
            bwrap_args=(
                "--ro-bind",  # connecting needs no write; writes would land on the host's disk
                str(socket_path.parent),
                SANDBOX_SOCKET_DIR,
                "--ro-bind",
                str(relay),
                SANDBOX_RELAY_PATH,
            ),
            env=sandbox_proxy_env(SANDBOX_PROXY_PORT),
            argv_prefix=tuple(egress_wrapped(EGRESS_EXEC, [])),
            root_files={APT_PROXY_FILE: apt_proxy_conf(SANDBOX_PROXY_PORT)},
            after_step=after_step,
        )
    finally:
        # Ends any connection still open; its event is reported before this returns.
        proxy.sandbox_close(proxy_key)
        trail.record()


def _settle(proxy, proxy_key: str, policy: NetworkPolicy, trail: _BuildTrail) -> None:
    """Wait until the proxy has reported every connection of a step that has exited (its
    sockets are closed; the proxy may still be finishing the last one)."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        stats = proxy.sandbox_stats(proxy_key)
        if stats is None or stats.active == 0:
            break
        time.sleep(0.01)
    # One round trip through the proxy's loop: a connection that has just ended has then
    # also been reported (opening an open key again only sets the same policy).
    proxy.sandbox_open(proxy_key, policy, Limits(), on_event=trail.add)


class _BuildTrail:
    """The proxy's events of one build: collected in the proxy's thread, written to the audit
    trail by the build's own thread (the proxy's thread never touches the database). Refusals
    pass a RefusalGate; at most `maxsize` events wait, the rest are counted."""

    def __init__(self, key: str, actor, context: dict, *, maxsize: int = TRAIL_MAX) -> None:
        self.key = key
        self.actor = actor
        self.context = context
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._pending: list[EgressEvent] = []
        self._gate = RefusalGate()
        self._unrecorded = UnrecordedEvents()

    def add(self, event: EgressEvent) -> None:
        with self._lock:
            if is_refusal(event) and not self._gate.admit(event, time.monotonic()):
                return  # counted: written with its window's summary
            if len(self._pending) >= self.maxsize:
                self._unrecorded.add(event)
                return
            self._pending.append(event)

    def record(self) -> list[str]:
        """Write the events reported so far (and the refusals and events counted so far); the
        build log's lines for the refused ones."""
        with self._lock:
            events, self._pending = self._pending, []
            summaries = self._gate.due(time.monotonic(), force=True)
            unrecorded, self._unrecorded = self._unrecorded, UnrecordedEvents()
        if not events and not summaries and not unrecorded.count:
            return []
        pk = Image.objects.filter(key=self.key).values_list("pk", flat=True).first()
        target = {
            "type": "sandboxes.image",
            "id": str(pk or ""),
            "display": f"image {self.key[:12]}",
        }
        lines = []
        with transaction.atomic():
            for event in events:
                self._write(
                    target,
                    action=ACTION_ALLOWED if event.allowed else ACTION_REFUSED,
                    outcome="success" if event.allowed and event.status < 400 else "denied",
                    reason=event.reason,
                    payload=event.as_dict(),
                )
                if is_refusal(event):
                    lines.append(event.log_line())
            for summary in summaries:
                self._write(
                    target,
                    action=ACTION_ALLOWED if summary.first.allowed else ACTION_REFUSED,
                    outcome="denied",
                    reason=summary.text(),
                    payload=summary.as_dict(),
                )
                lines.append(summary.log_line())
            if unrecorded.count:
                text = unrecorded.text(f"more than {self.maxsize} in one build step")
                self._write(
                    target,
                    action=ACTION_UNRECORDED,
                    outcome="error",
                    reason=text,
                    payload=unrecorded.as_dict(),
                )
                lines.append(f"egress: {text}")
        return lines

    def _write(self, target: dict, *, action: str, outcome: str, reason: str, payload: dict):
        audit_record(
            action=action,
            actor_type="agent",
            on_behalf_of=self.actor,
            target=target,
            outcome=outcome,
            context=self.context,
            reason=reason[:500],
            payload={**payload, "image_key": self.key},
        )
