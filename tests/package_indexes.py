"""This host's package indexes as its operator would admit them to the egress proxy.

On some networks the indexes pip, npm and apt are configured with resolve to non-public
addresses; the operator then lists them in CONVOY_EGRESS_INDEX_ADDRESSES (README "Network").
Tests that build images or install packages through the proxy do the same, from the host's own
configuration, so a build does not wait on refused connections.
"""

from __future__ import annotations

import contextlib
import socket

import pytest

from sandboxes.egress.addresses import address_refusal
from sandboxes.egress.packages import package_index_rules, package_indexes_read

NEVER_TRUSTED = (
    "loopback",
    "link-local",
    "link-local (cloud metadata)",
    "unspecified",
    "multicast",
)


def host_index_addresses() -> tuple[str, bool]:
    """The non-public addresses this host's package indexes resolve to ("" when public), and
    whether any of them answers. Skips when an index resolves to an address no sandbox may
    ever reach (loopback, link-local, metadata)."""
    trusted, reached = set(), False
    for rule in package_index_rules(package_indexes_read()):
        try:
            infos = socket.getaddrinfo(rule.pattern, 443, proto=socket.IPPROTO_TCP)
        except OSError:
            continue  # a mirror this host does not resolve: not needed here
        for address in {i[4][0] for i in infos}:
            why = address_refusal(address)
            if why in NEVER_TRUSTED:
                pytest.skip(f"{rule.pattern} resolves to {address} ({why}) on this host")
            if why:
                trusted.add(f"{address}/{128 if ':' in address else 32}")
            if not reached:
                with contextlib.suppress(OSError):
                    socket.create_connection((address, 443), timeout=5).close()
                    reached = True
    return ",".join(sorted(trusted)), reached
