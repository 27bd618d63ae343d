"""Per-sandbox cgroups for the local engines: memory, process count and CPU limits.

bubblewrap has no limits of its own and RLIMIT_NPROC does not bind root-owned processes, so
the fork bomb and memory hog limits come from a cgroup made for each sandbox (v1 controllers
or a delegated v2 subtree, whichever the host has). Where neither can be written the sandbox
still gets rlimits; `cgroup_create` then returns an empty list.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
PREFIX = "convoy-"


@functools.cache  # the worker never moves itself (only its children move)
def _own_path(controller: str) -> str:
    """Where this process sits in `controller`'s hierarchy ("" for cgroup v2's line)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    except OSError:
        pass
    return "/"


@functools.cache
def _v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


V1_CONTROLLERS = ("memory", "pids", "cpu")


def _leaf(name: str, owner: str) -> str:
    return f"{PREFIX}{owner + '-' if owner else ''}{name}"


@functools.cache
def _v1_present() -> tuple[str, ...]:
    return tuple(c for c in V1_CONTROLLERS if (ROOT / c).is_dir())


def cgroup_paths(name: str, *, owner: str = "") -> list[str]:
    """The directories `cgroup_create(name, owner=owner)` makes, without making them."""
    leaf = _leaf(name, owner)
    if _v2():
        return [str(ROOT / _own_path("").lstrip("/") / leaf)]
    return [str(ROOT / c / _own_path(c).lstrip("/") / leaf) for c in _v1_present()]


def cgroup_create(
    name: str, *, memory_bytes: int, pids_max: int, cpu: float, owner: str = ""
) -> list[str]:
    """Make cgroups named `convoy-<owner>-<name>` with the limits; return their directories."""
    leaf = _leaf(name, owner)
    made: list[Path] = []
    try:
        if _v2():
            path = ROOT / _own_path("").lstrip("/") / leaf
            path.mkdir(exist_ok=True)
            made.append(path)
            _write(path / "memory.max", str(memory_bytes))
            _write(path / "memory.swap.max", "0", required=False)
            _write(path / "pids.max", str(pids_max))
            _write(path / "cpu.max", f"{int(cpu * 100_000)} 100000", required=False)
        else:
            limits = {
                "memory": {
                    "memory.limit_in_bytes": str(memory_bytes),
                    "memory.swappiness": "0",
                },
                "pids": {"pids.max": str(pids_max)},
                "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(int(cpu * 1e5))},
            }
            for controller in _v1_present():
                files = limits[controller]
                path = ROOT / controller / _own_path(controller).lstrip("/") / leaf
                path.mkdir(exist_ok=True)
                made.append(path)
                for fname, value in files.items():
                    _write(path / fname, value, required=fname != "memory.swappiness")
    except OSError as exc:
        log.warning("cgroups unavailable (%s); sandbox %s gets rlimits only", exc, name)
        cgroup_remove([str(p) for p in made])
        return []
    return [str(p) for p in made]


def _write(path: Path, value: str, *, required: bool = True) -> None:
    try:
        path.write_text(value)
    except OSError:
        if required:
            raise


def cgroup_enter(paths: list[str], pid: int = 0) -> None:
    """Move a process (default: the calling one) into the cgroups."""
    for path in paths:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid or os.getpid()))


def cgroup_pids(paths: list[str]) -> set[int]:
    pids: set[int] = set()
    for path in paths:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in Path(path, "cgroup.procs").read_text().split())
    return pids


def cgroup_kill(paths: list[str], *, timeout: float = 5.0) -> None:
    """SIGKILL every process in the cgroups until they are empty (forks race the killer)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(paths)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def cgroup_remove(paths: list[str]) -> None:
    if not paths:
        return
    cgroup_kill(paths)
    for path in paths:
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)  # the last killed processes are still being reaped


def cgroups_owned(owner: str) -> list[str]:
    """Every convoy cgroup of this installation, for the reaper."""
    found: list[str] = []
    bases = [ROOT / _own_path("").lstrip("/")] if _v2() else []
    if not _v2():
        bases = [ROOT / c / _own_path(c).lstrip("/") for c in ("memory", "pids", "cpu")]
    for base in bases:
        with contextlib.suppress(OSError):
            found.extend(str(p) for p in base.glob(f"{PREFIX}{owner}-*") if p.is_dir())
    return found


WARM_EVERY_S = 0.002  # well inside a grace period, even when the GIL delays the thread
WARM_LINGER_S = 2.0  # how long after the last sandbox start the lock is kept ready
_warm_wake = threading.Event()
_warm_lock = threading.Lock()
_warm_state = {"thread": None, "until": 0.0}


def attach_warm() -> None:
    """Keep ready, for the next couple of seconds, the lock the next cgroup move needs.

    Moving a task between cgroups takes a kernel lock that, after a quiet spell, first waits
    for an RCU grace period (5 to 10 ms on this kind of host, and 15 ms and more under load).
    Once taken it stays ready as long as it is taken again within a grace period, so one
    helper thread makes a no-op move (into the cgroup it is already in) every few
    milliseconds while sandboxes are being started, and stops after a quiet spell. The first
    of its moves pays the wait while the rest of the sandbox is made; a real move (a new
    sandbox's first command) then finds the lock ready. cgroup v1 only; each move costs tens
    of microseconds.
    """
    if _v2():
        return
    _warm_state["until"] = time.monotonic() + WARM_LINGER_S
    thread = _warm_state["thread"]
    if thread is None or not thread.is_alive():  # first use, or after a fork
        with _warm_lock:
            thread = _warm_state["thread"]
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=_warm_loop, name="convoy-cgroup-warm", daemon=True)
                _warm_state["thread"] = thread
                thread.start()
    _warm_wake.set()


def _warm_loop() -> None:
    path = ROOT / "pids" / _own_path("pids").lstrip("/") / "tasks"
    tid = str(threading.get_native_id())  # not 0: writing 0 (oneself) skips the lock
    while True:
        _warm_wake.wait()
        _warm_wake.clear()
        while time.monotonic() < _warm_state["until"]:
            try:
                with open(path, "w") as f:
                    f.write(tid)
            except OSError:
                return  # no cgroup v1 pids hierarchy to use: nothing to keep warm
            time.sleep(WARM_EVERY_S)
