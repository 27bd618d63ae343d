"""The network seam of image builds: how a build step's sandbox reaches package indexes.

A `BuildNetwork` is a callable taking a build id and returning a context manager that yields a
`NetworkAttachment` for the duration of one build. `host_network` (this phase) shares the host's
network. The egress integration swaps in one that opens `EgressProxy.sandbox_open(...)`, binds
its Unix socket and the relay into the build sandbox, wraps each step's argv with the relay
launcher (`argv_prefix`) and sets HTTP(S)_PROXY (`env`), with `--unshare-net` (docs/images.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NetworkAttachment:
    # bwrap arguments for the network (`--share-net`, or binds of a proxy socket and relay).
    bwrap_args: tuple[str, ...]
    # Variables every step gets (HTTP_PROXY, HTTPS_PROXY, NO_PROXY, …).
    env: dict[str, str] = field(default_factory=dict)
    # Put before each step's argv (a relay launcher that starts the loopback relay, then execs).
    argv_prefix: tuple[str, ...] = ()


BuildNetwork = Callable[[str], AbstractContextManager[NetworkAttachment]]


@contextlib.contextmanager
def host_network(build_id: str) -> Iterator[NetworkAttachment]:
    """The host's network and resolver, as the host's own package clients see them."""
    yield NetworkAttachment(
        bwrap_args=("--share-net", "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf")
    )
