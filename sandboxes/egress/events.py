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
    # "sni", "bad_request", "connect_failed", "upstream", "closed", "idle".
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
