"""Internal routes: a name the proxy sends to a service on this host (the model gateway), and
the test suite's name mapping (`api.test` → 127.0.0.1), which only tests may use.

A route maps `name:port` to a host UNIX socket or a port on the host's 127.0.0.1. The proxy
applies no DNS and no address check to it (the target is chosen by Convoy, never by the
sandbox); the service stays unreachable by its address or any other name, and only sandboxes
whose policy allows `name:port` reach it. See `EgressProxy.route_add` and docs/egress.md.

A route made with `identify=True` tells its service which sandbox is calling: before any byte
of the sandbox's, the proxy writes one line `CONVOY-SANDBOX <sandbox key>\r\n` (the key of the
socket the connection came in on, so a sandbox cannot choose it). The model gateway binds each
token to its sandbox with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import dataclass

from core.errors import Invalid
from sandboxes.egress.policy import allow_entry_parse, normalise_host

CHUNK = 256 * 1024
IDENTITY_PREFIX = "CONVOY-SANDBOX "


@dataclass(frozen=True)
class Route:
    name: str
    port: int
    target: str | int  # a UNIX socket path, or a TCP port on 127.0.0.1
    identify: bool = False  # the service is told the calling sandbox's key (see above)

    def __str__(self) -> str:
        where = self.target if isinstance(self.target, str) else f"127.0.0.1:{self.target}"
        return f"route {where}"


def route_make(
    name: str, port: int, target: str | os.PathLike | int, *, identify: bool = False
) -> Route:
    """A checked route; Invalid(field="route") for a wildcard, a bad port or a relative path."""
    host, _ports = allow_entry_parse(f"{name}:{port}", field_name="route")
    if host.startswith("*."):
        raise Invalid("a route names one host, not a wildcard", field="route")
    if isinstance(target, bool):
        raise Invalid("a route's target is a socket path or a port", field="route")
    if isinstance(target, int):
        if not 0 < target < 65536:
            raise Invalid(f"port {target} is not a TCP port", field="route")
        return Route(host, port, target, identify)
    path = os.fspath(target)
    if not os.path.isabs(path):
        raise Invalid(f"{path!r} is not an absolute socket path", field="route")
    return Route(host, port, path, identify)


async def route_open(route: Route, timeout: float, *, caller: str):
    """(reader, writer) to the route's service, told `caller` (the sandbox's key) first when the
    route identifies; OSError or TimeoutError if it does not answer."""
    if isinstance(route.target, int):
        opening = asyncio.open_connection("127.0.0.1", route.target, limit=CHUNK)
    else:
        opening = asyncio.open_unix_connection(route.target, limit=CHUNK)
    reader, writer = await asyncio.wait_for(opening, timeout)
    if route.identify:
        writer.write(f"{IDENTITY_PREFIX}{caller}\r\n".encode("ascii"))
    return reader, writer


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
