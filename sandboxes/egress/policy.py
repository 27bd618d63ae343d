"""A campaign's `network:` value: parsing it into an allowlist, and matching hosts against it.

`network: none` (the default) allows nothing. `network: {allow: [...], package_indexes: bool}`
allows exact names, one-level wildcards (`*.example.org`) and `host:port` entries (ports 443
and 80 unless one is given). Anything that would open more than a campaign names is refused
with an `Invalid` whose `field` points at the entry and whose message says what to write.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import Invalid

DEFAULT_PORTS = frozenset({443, 80})
# RFC 1123 labels; an underscore is tolerated because real service names (SRV-style) use it.
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")
# Names the proxy routes to Convoy's own services (the model gateway, gateway.convoy.internal),
# or that mean this host: a campaign's network.allow may not name them or their subdomains.
RESERVED_NAMES = ("convoy.internal", "localhost")
_EXAMPLE = 'network: {allow: [api.example.com, "*.example.org", "git.example.com:22"]}'


@dataclass(frozen=True)
class AllowRule:
    """One allowlist entry: a name (or `*.suffix`) and the ports it opens."""

    pattern: str
    ports: frozenset[int] = DEFAULT_PORTS
    # True for the host's own package indexes (`package_index_rules`): only these names may
    # resolve into the operator's CONVOY_EGRESS_INDEX_ADDRESSES ranges.
    index: bool = False

    @property
    def wildcard(self) -> bool:
        return self.pattern.startswith("*.")

    def matches(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        host = normalise_host(host)
        if not self.wildcard:
            return host == self.pattern
        # One level only: `*.example.org` is `a.example.org`, not `a.b.example.org`.
        head, dot, tail = host.partition(".")
        return bool(dot) and bool(head) and tail == self.pattern[2:]

    def __str__(self) -> str:
        if self.ports == DEFAULT_PORTS:
            return self.pattern
        return ",".join(f"{self.pattern}:{p}" for p in sorted(self.ports))


@dataclass(frozen=True)
class NetworkPolicy:
    """What a sandbox may reach through the egress proxy. `NetworkPolicy()` allows nothing."""

    rules: tuple[AllowRule, ...] = ()
    package_indexes: bool = False

    @property
    def blocks_all(self) -> bool:
        return not self.rules

    def allows(self, host: str, port: int) -> bool:
        return any(rule.matches(host, port) for rule in self.rules)

    def with_rules(self, extra: Iterable[AllowRule]) -> NetworkPolicy:
        """This policy plus `extra` (used to add the host's package indexes once resolved)."""
        merged = list(self.rules)
        merged += [r for r in extra if r not in merged]
        return NetworkPolicy(rules=tuple(merged), package_indexes=self.package_indexes)

    def as_spec(self) -> str | dict:
        """The normalised `network:` value (what the run's record stores)."""
        if not self.rules and not self.package_indexes:
            return "none"
        return {"allow": [str(r) for r in self.rules], "package_indexes": self.package_indexes}


NONE = NetworkPolicy()


def normalise_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def network_parse(value: object, *, field_name: str = "network") -> NetworkPolicy:
    """Parse a spec's `network:` value; refuse `open`, IP addresses and `*` naming the field.

    The returned policy has only the campaign's own rules: `package_indexes` is a flag that
    `package_index_rules()` (in `sandboxes.egress.packages`) turns into rules on the host.
    """
    if value is None or value == "none":
        return NONE
    if value == "open":
        raise Invalid(
            "`open` would let the sandbox reach the host and the whole internet; "
            f"name the hosts it needs instead, e.g. {_EXAMPLE}",
            field=field_name,
        )
    if isinstance(value, str):
        raise Invalid(
            f"expected `none` or a mapping with `allow:`, got {value!r}; e.g. {_EXAMPLE}",
            field=field_name,
        )
    if not isinstance(value, dict):
        raise Invalid(f"expected `none` or a mapping, e.g. {_EXAMPLE}", field=field_name)
    unknown = sorted(set(value) - {"allow", "package_indexes"})
    if unknown:
        raise Invalid(
            f"unknown key {unknown[0]!r}; a network mapping has `allow` and `package_indexes`",
            field=f"{field_name}.{unknown[0]}",
        )
    package_indexes = value.get("package_indexes", False)
    if not isinstance(package_indexes, bool):
        raise Invalid("expected true or false", field=f"{field_name}.package_indexes")
    allow = value.get("allow", [])
    if allow is None:
        allow = []
    if isinstance(allow, str):
        raise Invalid(
            f"expected a list of host names, e.g. allow: [{allow}]", field=f"{field_name}.allow"
        )
    if not isinstance(allow, list):
        raise Invalid("expected a list of host names", field=f"{field_name}.allow")
    rules: dict[str, set[int]] = {}
    order: list[str] = []
    for i, entry in enumerate(allow):
        pattern, ports = allow_entry_parse(entry, field_name=f"{field_name}.allow[{i}]")
        if pattern not in rules:
            rules[pattern] = set()
            order.append(pattern)
        rules[pattern] |= ports
    return NetworkPolicy(
        rules=tuple(AllowRule(p, frozenset(rules[p])) for p in order),
        package_indexes=package_indexes,
    )


def allow_entry_parse(entry: object, *, field_name: str) -> tuple[str, frozenset[int]]:
    """One `allow:` entry → (pattern, ports). `field_name` is the entry's path for errors."""
    if not isinstance(entry, str) or not entry.strip():
        raise Invalid("expected a host name such as api.example.com", field=field_name)
    raw = entry.strip()
    if "://" in raw or "/" in raw:
        raise Invalid(
            f"{raw!r} is a URL; write only the host name (and :port if not 443 or 80)",
            field=field_name,
        )
    host, ports = raw, DEFAULT_PORTS
    if raw.startswith("["):
        raise Invalid(
            f"{raw!r} is an IP address; the proxy allows names only: write the host name "
            "that serves it (addresses are checked after the proxy resolves the name)",
            field=field_name,
        )
    if raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
        if (
            not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5)
            or not 0 < int(port_text) < 65536
        ):
            raise Invalid(
                f"{raw!r}: the port must be a number from 1 to 65535, e.g. git.example.com:22",
                field=field_name,
            )
        ports = frozenset({int(port_text)})
    host = normalise_host(host)
    if _is_ip(host) or raw.count(":") > 1:
        raise Invalid(
            f"{raw!r} is an IP address; the proxy allows names only: write the host name "
            "that serves it (addresses are checked after the proxy resolves the name)",
            field=field_name,
        )
    if host == "*" or (host.startswith("*.") and "." not in host[2:].strip("*.")):
        raise Invalid(
            f"{raw!r} would allow every host (or a whole top-level domain); name the hosts, "
            'or one domain\'s subdomains with "*.example.org"',
            field=field_name,
        )
    name = host[2:] if host.startswith("*.") else host
    labels = name.split(".")
    if "*" in name:
        raise Invalid(
            f'{raw!r}: a wildcard may only be the first label, as in "*.example.org"',
            field=field_name,
        )
    if not all(_LABEL.match(label) for label in labels):
        raise Invalid(f"{raw!r} is not a valid host name", field=field_name)
    return host, ports


def reserved_refuse(policy: NetworkPolicy, *, field_name: str = "network") -> None:
    """Invalid if a campaign's `network.allow` names one of Convoy's own names (its routes to
    the model gateway, which a model variant's grant opens) or this host."""
    for i, rule in enumerate(policy.rules):
        name = rule.pattern.removeprefix("*.")
        if any(name == kept or name.endswith("." + kept) for kept in RESERVED_NAMES):
            raise Invalid(
                f"{rule.pattern!r} is a name Convoy keeps for itself (this host, or its model "
                "gateway, which a model variant's grant opens, never network.allow)",
                field=f"{field_name}.allow[{i}]",
            )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class Limits:
    """Per-sandbox limits the proxy enforces (bytes both ways, concurrent connections)."""

    egress_mb: int = 1024
    max_connections: int = 64
    connect_timeout_s: float = 10.0
    # A tunnel with no bytes either way for this long is closed (a stuck client holds a slot).
    idle_timeout_s: float = 600.0

    @property
    def egress_bytes(self) -> int:
        return self.egress_mb * 1024 * 1024


def modal_network_kwargs(policy: NetworkPolicy) -> dict:
    """The `modal.Sandbox.create` arguments closest to `policy` (modal >= 1.6).

    Modal enforces names outside the container (`outbound_domain_allowlist`, with `*.`
    prefixes) but not ports, and reports no per-connection events: see docs/egress.md.
    """
    if policy.blocks_all:
        return {"block_network": True}
    return {"outbound_domain_allowlist": [rule.pattern for rule in policy.rules]}
