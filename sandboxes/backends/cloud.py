"""What the cloud backends (E2B, Daytona) share: credentials, GPU and allowlist parsing, the
shell wrappers that let a command be killed, and the loop that turns a provider's output
stream into ExecOutput events under an output cap and a deadline.

Modal has its own copy of the loop (its SDK hands over two blocking streams and enforces the
deadline itself); the wrappers and markers are Modal's, imported so that every cloud backend
prints the same truncation line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import posixpath
import queue
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings

from sandboxes.backends.base import (
    ExecEvent,
    ExecOutput,
    ExecResult,
    SandboxError,
    SandboxHandle,
)
from sandboxes.backends.modal import (
    CREATED_LABEL,
    EXEC_WRAPPER,
    FILES_CLEAR,
    FILES_SEAL,
    KILL_GRACE_S,
    KILLED_EXIT,
    TIMEOUT_EXIT,
    WORKSPACE,
    labels_stamped,
    truncation_marker,
)

__all__ = [
    "CREATED_LABEL",
    "EXEC_KILL_TREE",
    "EXEC_WRAPPER",
    "FILES_CLEAR",
    "FILES_SEAL",
    "KILLED_EXIT",
    "TIMEOUT_EXIT",
    "WORKSPACE",
    "allowlist_parse",
    "created_at",
    "credential",
    "exec_stream",
    "fork_parallel",
    "gpu_parse",
    "labels_stamped",
    "workspace_path",
]

# Stop the command started by EXEC_WRAPPER (pid noted under the exec's id, $0) and every
# process below it: each is stopped before its children are read, so none escapes to init by
# the parent dying first. The cloud shells give commands no process group of their own, so a
# group kill (Modal's EXEC_KILL) would miss the background children of a timed-out command.
EXEC_KILL_TREE = (
    'p=$(cat /tmp/.convoy-exec/"$0" 2>/dev/null) || exit 0; rm -f /tmp/.convoy-exec/"$0"; '
    't() { kill -STOP "$1" 2>/dev/null; '
    'for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do t "$c"; done; '
    'kill -9 "$1" 2>/dev/null; }; t "$p"'
)
_GPU = re.compile(r"^(?P<kind>[A-Za-z0-9][A-Za-z0-9_-]*)(?::(?P<count>[1-9][0-9]?))?\Z")


def credential(name: str) -> str:
    """A provider credential: the setting of that name when the settings module defines it,
    else the environment variable the provider's SDK itself reads. Never logged."""
    return str(getattr(settings, name, "") or os.environ.get(name, ""))


def created_at(labels: Mapping[str, str]) -> float | None:
    """When a cloud sandbox was created (Unix seconds), from its CREATED_LABEL; None if unknown."""
    try:
        return float(labels[CREATED_LABEL])
    except (KeyError, TypeError, ValueError):
        return None


def workspace_path(path: str) -> str:
    """Relative paths are inside the workspace, as on the local backends."""
    return posixpath.normpath(posixpath.join(WORKSPACE, path))


def gpu_parse(gpu: str) -> tuple[str, int]:
    """`limits.gpu` ("T4", "A10G:2") → (type, count)."""
    match = _GPU.match(gpu.strip())
    if not match:
        raise SandboxError(f"gpu: {gpu!r} is not a GPU type with an optional count, e.g. 'A10G:2'")
    return match["kind"], int(match["count"] or 1)


def allowlist_parse(entries: Sequence[str]) -> list[tuple[str, int | None]]:
    """The spec's allowlist entries ("host", "*.example.org", "host:22", "10.0.0.0/8") as
    (host or network, port or None)."""
    parsed = []
    for entry in entries:
        host, port = entry.strip().lower(), None
        if ":" in host and host.count(":") == 1:
            host, _, raw = host.partition(":")
            if not raw.isdigit():
                raise SandboxError(f"network: {entry!r} has no valid port")
            port = int(raw)
        if not host:
            raise SandboxError(f"network: {entry!r} names no host")
        parsed.append((host, port))
    return parsed


def is_network(host: str) -> bool:
    """An IP address or CIDR block rather than a domain name."""
    try:
        ipaddress.ip_network(host, strict=False)
    except ValueError:
        return False
    return True


def exec_stream(
    items: queue.Queue,
    *,
    kill: Callable[[], None],
    fail: Callable[[BaseException], None],
    timeout_s: float | None,
    output_cap: int,
    started: float,
    cleanup: Callable[[], None] = lambda: None,
) -> Iterator[ExecEvent]:
    """ExecOutput events from a provider's output, then one ExecResult.

    A pump thread fills `items` with ("stdout"|"stderr", bytes), then ("exit", code) or
    ("error", exception). A command past its deadline or over its output cap is stopped with
    `kill` and reported as timed out (exit 124) or truncated (exit 137); output after that is
    dropped. `fail` turns the provider's exception into a SandboxError (and raises it). A
    signalled command whose provider reports no code (a negative one) is reported as 137.
    """
    deadline = started + timeout_s if timeout_s else None
    sent, truncated, timed_out = 0, False, False
    stopped_at: float | None = None
    exit_code: int | None = None
    finished = False
    try:
        while True:
            wait = None
            now = time.monotonic()
            if stopped_at is not None:
                wait = stopped_at + KILL_GRACE_S - now
                if wait <= 0:
                    break  # the kill did not end the stream in time: report what we know
            elif deadline is not None:
                wait = deadline - now
                if wait <= 0:
                    timed_out, stopped_at = True, now
                    kill()
                    continue
            try:
                kind, value = items.get(timeout=wait)
            except queue.Empty:
                continue
            if kind == "exit":
                exit_code = value
                break
            if kind == "error":
                if stopped_at is not None:
                    break  # the stream broke because we killed its command
                fail(value)
                raise SandboxError(f"exec failed: {value}", transient=True) from value
            if stopped_at is not None:
                continue
            if len(value) <= output_cap - sent:
                sent += len(value)
                yield ExecOutput(kind, value)
                continue
            if output_cap > sent:
                yield ExecOutput(kind, value[: output_cap - sent])
                sent = output_cap
            yield ExecOutput("stderr", truncation_marker(output_cap))
            truncated, stopped_at = True, time.monotonic()
            kill()
        finished = True
    finally:
        if not finished:  # the caller stopped reading, or the provider failed: stop it anyway
            with contextlib.suppress(Exception):
                kill()
        with contextlib.suppress(Exception):
            cleanup()
    if timed_out:
        code = TIMEOUT_EXIT
    elif truncated:
        code = KILLED_EXIT
    elif exit_code is None:
        raise SandboxError("the command's exit code was lost", transient=True)
    else:
        code = KILLED_EXIT if exit_code < 0 else exit_code
    yield ExecResult(
        exit_code=code,
        timed_out=timed_out,
        truncated=truncated,
        duration_ms=int((time.monotonic() - started) * 1000),
        bytes_out=sent,
    )


def fork_parallel(
    create: Callable[[], SandboxHandle],
    *,
    count: int,
    concurrency: int,
    terminate: Callable[[SandboxHandle], None],
    name: str,
) -> list[SandboxHandle]:
    """`count` creates, a few at a time; all or none survive (a partial fork is terminated,
    and what a crash leaves the reaper finds by its labels)."""
    workers = max(1, min(count, concurrency))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-fork") as pool:
        futures = [pool.submit(create) for _ in range(count)]
    made, errors = [], []
    for future in futures:
        try:
            made.append(future.result())
        except SandboxError as error:
            errors.append(error)
    if errors:
        for handle in made:
            with contextlib.suppress(SandboxError):
                terminate(handle)
        raise errors[0]
    return made
