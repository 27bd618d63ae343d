"""The network seam of image builds: how a build step's sandbox reaches package indexes.

A `BuildNetwork` is a callable taking the image key (and `index_urls`, the apt sources the
base wrote into a Debian image) and returning a context manager that yields a
`NetworkAttachment` for the duration of one build. Builds use the egress proxy
(`sandboxes.images.proxy_network`, the default of `image_ensure`): no network but loopback,
the proxy's socket and the relay bound in, each step's argv wrapped by the relay launcher,
HTTP(S)_PROXY set. `host_network` shares the host's network; only tests pass it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field


def _no_notes(failed: bool) -> list[str]:
    return []


@dataclass(frozen=True)
class NetworkAttachment:
    # bwrap arguments for the network (`--share-net`, or binds of a proxy socket and relay).
    bwrap_args: tuple[str, ...]
    # Variables every step gets (HTTP_PROXY, HTTPS_PROXY, NO_PROXY, …).
    env: dict[str, str] = field(default_factory=dict)
    # Put before each step's argv (a relay launcher that starts the loopback relay, then execs).
    argv_prefix: tuple[str, ...] = ()
    # Files written into the image before the first step (path inside: text), where the
    # directory exists: apt's proxy configuration.
    root_files: Mapping[str, str] = field(default_factory=dict)
    # Called after each step with whether it failed: records the step's connections and
    # returns the lines the build log gets (refusals).
    after_step: Callable[[bool], list[str]] = _no_notes


BuildNetwork = Callable[..., AbstractContextManager[NetworkAttachment]]


@contextlib.contextmanager
def host_network(key: str, *, index_urls: Sequence[str] = ()) -> Iterator[NetworkAttachment]:
    """The host's network and resolver, as the host's own package clients see them (tests)."""
    yield NetworkAttachment(
        bwrap_args=("--share-net", "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf")
    )
