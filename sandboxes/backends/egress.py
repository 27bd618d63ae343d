"""Egress for the local engines: the relay that joins a sandbox to Convoy's egress proxy.

A sandbox made with `SandboxSpec.egress_socket` keeps no network but loopback; the proxy's
socket directory and the relay are mounted in, the relay listens on 127.0.0.1:3128 before the
command runs, and the proxy variables point every tool there (see docs/egress.md).
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Sequence

from sandboxes.backends.base import SandboxError, SandboxSpec
from sandboxes.egress.packages import sandbox_proxy_env
from sandboxes.egress.relay import (
    SANDBOX_PROXY_PORT,
    SANDBOX_RELAY_PATH,
    SANDBOX_SOCKET_DIR,
    relay_argv,
    relay_binary,
)

# Egress (SandboxSpec.egress_socket): the relay to the proxy's socket listens on 127.0.0.1:3128
# inside the sandbox before the command runs. A command that starts it itself: the relay's first
# line (through a FIFO, no polling) says it listens; it dies with the command (PDEATHSIG).
_RELAY = shlex.join(relay_argv(SANDBOX_PROXY_PORT))
_READY = f"listening {SANDBOX_PROXY_PORT}"
EGRESS_EXEC = f"""f=/tmp/.convoy-relay.$$
mkfifo -m 600 "$f" || exit 125
{_RELAY} >"$f" 2>&1 &
read -r l <"$f"; rm -f "$f"
[ "$l" = "{_READY}" ] || {{ echo "convoy: the egress relay did not start: $l" >&2; exit 125; }}
exec "$@"
"""
# A sandbox whose init keeps one relay (gVisor): restarted if a kill takes it, and each command
# waits (5 s at most) for its ready line first.
EGRESS_STATUS = "/tmp/.convoy-relay"  # noqa: S108 (the sandbox's own tmpfs)
EGRESS_INIT = f"""trap 'exit 0' TERM
while :; do {_RELAY} >{EGRESS_STATUS} 2>&1 & wait $!; : >{EGRESS_STATUS}; sleep 0.2; done"""
EGRESS_WAIT = f"""i=0
until read -r l <{EGRESS_STATUS} 2>/dev/null && [ "$l" = "{_READY}" ]; do
  i=$((i+1)); [ $i -lt 500 ] || {{ echo "convoy: the egress relay is not running" >&2; exit 125; }}
  sleep 0.01
done
exec "$@"
"""


def egress_wrapped(script: str, argv: Sequence[str]) -> list[str]:
    """`argv` run by `script` (EGRESS_EXEC or EGRESS_WAIT), which execs it unchanged."""
    return ["/bin/sh", "-c", script, "convoy-egress", *argv]


def egress_extra(spec: SandboxSpec) -> dict:
    """What a sandbox with egress keeps in its meta: the socket's directory, the relay and the
    CA files to bind; {} without egress."""
    if not spec.egress_socket:
        return {}
    try:
        is_socket = stat.S_ISSOCK(os.stat(spec.egress_socket).st_mode)
    except OSError:
        is_socket = False
    if not is_socket or not os.path.isabs(spec.egress_socket):
        raise SandboxError(f"egress_socket: {spec.egress_socket!r} is not a UNIX socket")
    if os.path.basename(spec.egress_socket) != "proxy.sock":
        raise SandboxError("egress_socket: the proxy's socket is named proxy.sock")
    return {
        "egress_dir": os.path.dirname(spec.egress_socket),
        "egress_relay": str(relay_binary()),
        "egress_files": list(spec.egress_files),
    }


def egress_env(spec: SandboxSpec) -> dict[str, str]:
    """The proxy variables, then the spec's own egress variables; {} without egress."""
    if not spec.egress_socket:
        return {}
    return {**sandbox_proxy_env(SANDBOX_PROXY_PORT), **spec.egress_env}


def egress_binds(extra: dict) -> list[tuple[str, str, bool]]:
    """(host path, sandbox path, writable) to mount for a sandbox's meta.extra: the proxy's
    socket directory, the relay, the CA files that exist; [] without egress. All read-only:
    connecting to a socket needs no writable mount, and the socket's directory is on the
    host's data disk, outside the workspace and its `disk_mb` (writable, a command filled it)."""
    if not extra.get("egress_dir"):
        return []
    return [
        (extra["egress_dir"], SANDBOX_SOCKET_DIR, False),
        (extra["egress_relay"], SANDBOX_RELAY_PATH, False),
        *((p, p, False) for p in extra.get("egress_files", ()) if os.path.exists(p)),
    ]
