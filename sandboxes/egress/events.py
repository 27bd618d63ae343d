"""What the egress proxy reports: one `EgressEvent` per connection attempt, and per-sandbox totals.

The proxy hands each event to the sandbox's `on_event` callback (in the proxy's thread); the
caller turns it into an audit event and, for refusals, the one log line `log_line()` gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EgressEvent:
    """One connection attempt through the proxy, reported when it ends (or is refused)."""

    sandbox_key: str
    method: str = ""
    host: str = ""
    port: int = 0
    allowed: bool = False
    # Machine-readable outcome: "ok", "not_allowed", "ip_literal", "address", "dns", "limit",
    # "sni", "bad_request", "connect_failed", "upstream", "closed", "idle", "host_addresses"
    # (the host's own addresses are unknown: every address is refused), "one_request" (a
    # second request on a plain-HTTP connection, never forwarded).
    code: str = ""
    reason: str = ""
    status: int = 0
    address: str | None = None
    via: str = "direct"
    bytes_up: int = 0
    bytes_down: int = 0
    started_at: float = 0.0
    duration_s: float = 0.0

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def log_line(self) -> str:
        """`egress refused: 127.0.0.1:5432 (loopback)` — the line a sandbox's log shows."""
        if not self.allowed:
            return f"egress refused: {self.target} ({self.reason})"
        if self.code != "ok":
            return f"egress failed: {self.target} ({self.reason})"
        return (
            f"egress: {self.target} via {self.address or self.via}, "
            f"{self.bytes_up} B up, {self.bytes_down} B down, {self.duration_s:.2f} s"
        )

    def as_dict(self) -> dict:
        return {
            "sandbox": self.sandbox_key,
            "method": self.method,
            "host": self.host,
            "port": self.port,
            "allowed": self.allowed,
            "code": self.code,
            "reason": self.reason,
            "status": self.status,
            "address": self.address,
            "via": self.via,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 6),
        }


@dataclass
class EgressStats:
    """A sandbox's totals so far: "egress: 14 connections to 2 hosts, 1 refused"."""

    connections: int = 0
    refused: int = 0
    active: int = 0
    bytes_total: int = 0
    hosts: set[str] = field(default_factory=set)

    def summary(self) -> str:
        hosts = len(self.hosts)
        return (
            f"egress: {self.connections} connection{'s' * (self.connections != 1)} to "
            f"{hosts} host{'s' * (hosts != 1)}, {self.refused} refused"
        )


def is_refusal(event: EgressEvent) -> bool:
    """A refusal or a failed connection: what gets a line in the sandbox's log."""
    return not event.allowed or event.status >= 400


@dataclass
class CollapsedRefusals:
    """Refusals of one target (same outcome and reason) that were counted, not recorded one
    by one: `first` is the first of them, `count` how many, `targets` how many distinct
    targets when this is the bucket for targets past the gate's `targets_max`."""

    first: EgressEvent
    count: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    targets: int = 1

    @property
    def what(self) -> str:
        return self.first.target if self.targets == 1 else f"{self.targets} other targets"

    def text(self) -> str:
        """`7476 more refusals of 127.0.0.1:5432 in 9.8 s (loopback)`."""
        kind = "refusals" if not self.first.allowed else "failed connections"
        span = self.last_at - self.first_at
        return f"{self.count} more {kind} of {self.what} in {span:.1f} s ({self.first.reason})"

    def log_line(self) -> str:
        return f"egress: {self.text()}"

    def as_dict(self) -> dict:
        out = self.first.as_dict()
        out.update(
            count=self.count,
            first_at=self.first_at,
            last_at=self.last_at,
            targets=self.targets,
            bytes_up=0,
            bytes_down=0,
        )
        if self.targets > 1:
            out.update(host="", port=0, code="various", reason="various", address=None)
        return out


@dataclass
class UnrecordedEvents:
    """Events a full queue could not keep: counted, so the trail says what it is missing."""

    count: int = 0
    refused: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    hosts: set[str] = field(default_factory=set)

    def add(self, event: EgressEvent) -> None:
        self.count += 1
        self.refused += not event.allowed
        self.first_at = self.first_at or event.started_at
        self.last_at = max(self.last_at, event.started_at)
        if event.host and len(self.hosts) < 20:
            self.hosts.add(event.host)

    def text(self, why: str = "the audit writer fell behind") -> str:
        return f"{self.count} egress events ({self.refused} refused) not recorded one by one: {why}"

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "refused": self.refused,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "hosts": sorted(self.hosts),
        }


class RefusalGate:
    """Per-sandbox collapsing of refusals, so that a sandbox refused thousands of times a
    second cannot flood the audit trail and its log: in each window of `window_s` the first
    `in_full` refusals are recorded one by one; the rest are counted per target (outcome and
    reason), and `due()` hands back one `CollapsedRefusals` per target when the window ends.
    Not thread-safe: the caller holds a lock. `now` is time.monotonic()."""

    def __init__(self, *, in_full: int = 20, window_s: float = 10.0, targets_max: int = 32):
        self.in_full, self.window_s, self.targets_max = in_full, window_s, targets_max
        self._window_start: float | None = None
        self._recorded = 0
        self._counted: dict[tuple, CollapsedRefusals] = {}
        self._other: CollapsedRefusals | None = None
        self._other_targets: set[tuple] = set()
        self._ready: list[CollapsedRefusals] = []
        self.last_seen = 0.0

    def admit(self, event: EgressEvent, now: float) -> bool:
        """True: record `event` in full; False: it was counted into a summary."""
        self.last_seen = now
        if self._window_start is not None and now - self._window_start >= self.window_s:
            self._take()
            self._window_start = None
        if self._window_start is None:
            self._window_start, self._recorded = now, 0
        if self._recorded < self.in_full:
            self._recorded += 1
            return True
        key = (event.allowed, event.host, event.port, event.code, event.reason)
        summary = self._counted.get(key)
        if summary is None and len(self._counted) >= self.targets_max:
            self._other_targets.add(key)
            if self._other is None:
                self._other = CollapsedRefusals(event, first_at=event.started_at)
            summary = self._other
            summary.targets = max(len(self._other_targets), 2)
        elif summary is None:
            summary = self._counted[key] = CollapsedRefusals(event, first_at=event.started_at)
        summary.count += 1
        summary.last_at = max(summary.last_at, event.started_at)
        return False

    def due(self, now: float, *, force: bool = False) -> list[CollapsedRefusals]:
        """Summaries of windows that ended; with `force` also what the open window counted so
        far (its count of full records stays, so forcing opens no new allowance)."""
        if self._window_start is not None and now - self._window_start >= self.window_s:
            self._take()
            self._window_start = None
        elif force:
            self._take()
        ready, self._ready = self._ready, []
        return ready

    def idle(self, now: float, after_s: float) -> bool:
        pending = self._counted or self._other is not None or self._ready
        return not pending and now - self.last_seen > after_s

    def _take(self) -> None:
        self._ready += self._counted.values()
        if self._other is not None:
            self._ready.append(self._other)
        self._counted, self._other, self._other_targets = {}, None, set()
