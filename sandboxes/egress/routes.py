"""Internal routes: a name the proxy sends to a service on this host (the model gateway), and
the test suite's name mapping (`api.test` → 127.0.0.1), which only tests may use.

A route maps `name:port` to a host UNIX socket or a port on the host's 127.0.0.1. The proxy
applies no DNS and no address check to it (the target is chosen by Convoy, never by the
sandbox); the service stays unreachable by its address or any other name, and only sandboxes
whose policy allows `name:port` reach it. See `EgressProxy.route_add` and docs/egress.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import dataclass

from core.errors import Invalid
from sandboxes.egress.policy import allow_entry_parse, normalise_host

CHUNK = 256 * 1024


@dataclass(frozen=True)
class Route:
    name: str
    port: int
    target: str | int  # a UNIX socket path, or a TCP port on 127.0.0.1

    def __str__(self) -> str:
        where = self.target if isinstance(self.target, str) else f"127.0.0.1:{self.target}"
        return f"route {where}"


def route_make(name: str, port: int, target: str | os.PathLike | int) -> Route:
    """A checked route; Invalid(field="route") for a wildcard, a bad port or a relative path."""
    host, _ports = allow_entry_parse(f"{name}:{port}", field_name="route")
    if host.startswith("*."):
        raise Invalid("a route names one host, not a wildcard", field="route")
    if isinstance(target, bool):
        raise Invalid("a route's target is a socket path or a port", field="route")
    if isinstance(target, int):
        if not 0 < target < 65536:
            raise Invalid(f"port {target} is not a TCP port", field="route")
        return Route(host, port, target)
    path = os.fspath(target)
    if not os.path.isabs(path):
        raise Invalid(f"{path!r} is not an absolute socket path", field="route")
    return Route(host, port, path)


async def route_open(route: Route, timeout: float):
    """(reader, writer) to the route's service; OSError or TimeoutError if it does not answer."""
    if isinstance(route.target, int):
        opening = asyncio.open_connection("127.0.0.1", route.target, limit=CHUNK)
    else:
        opening = asyncio.open_unix_connection(route.target, limit=CHUNK)
    return await asyncio.wait_for(opening, timeout)


def test_hosts_parse(text: str) -> dict[str, str]:
    """`api.test=127.0.0.1,internal.test=10.0.0.1` → mapping; test-only (see EgressProxy)."""
    mapping = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, address = item.partition("=")
        ipaddress.ip_address(address.strip())
        if not sep:
            raise ValueError(f"expected name=address, got {item!r}")
        mapping[normalise_host(name)] = address.strip()
    return mapping
