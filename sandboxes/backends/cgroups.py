"""Per-sandbox cgroups for the local engines: memory, process count and CPU limits.

bubblewrap has no limits of its own and RLIMIT_NPROC does not bind root-owned processes, so
the fork bomb and memory hog limits come from a cgroup made for each sandbox (v1 controllers
or a delegated v2 subtree, whichever the host has). Where neither can be written the sandbox
still gets rlimits; `cgroup_create` then returns an empty list.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import tempfile
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
        bases = [ROOT / c / _own_path(c).lstrip("/") for c in V1_CONTROLLERS]
    for base in bases:
        with contextlib.suppress(OSError):
            found.extend(str(p) for p in base.glob(f"{PREFIX}{owner}-*") if p.is_dir())
    return found


WARM_EVERY_S = 0.002  # well inside a grace period, even when the GIL delays the thread
WARM_LINGER_S = 2.0  # how long after the last sandbox start the lock is kept ready
WARM_STANDBY_S = 0.1  # how often a process that is not warming looks whether it should
# Shared by every worker process on the host: its lock says which one warms, its mtime when a
# sandbox last started. In /run (root's, usually tmpfs) where the worker may write there.
WARM_FILE = Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir())
WARM_FILE /= "convoy-cgroup-warm"
_warm_wake = threading.Event()
_warm_lock = threading.Lock()
_warm_state: dict = {"thread": None}


def attach_warm() -> None:
    """Keep ready, for the next couple of seconds, the lock the next cgroup move needs.

    Moving a task between cgroups takes a kernel lock that, after a quiet spell, first waits
    for an RCU grace period (8 to 16 ms on this kind of host). Once taken it stays ready as
    long as it is taken again within a grace period, so while sandboxes are being started one
    helper thread on the host makes a no-op move (into the cgroup it is already in) every
    WARM_EVERY_S, and stops WARM_LINGER_S after the last start. The first of its moves pays
    the wait while the rest of the sandbox is made; a real move (a new sandbox's first
    command) then finds the lock ready. One thread for the whole host, not one per worker
    process: an flock on WARM_FILE picks it, and every start touches the file. cgroup v1 only,
    and not needed where a cgroup2 hierarchy is mounted with `favordynmods`: moves then never
    wait for a grace period (README, host tuning).
    """
    if _v2() or _favor_dynmods():
        return
    try:
        os.utime(WARM_FILE, follow_symlinks=False)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            os.close(os.open(WARM_FILE, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    except OSError:
        return
    thread = _warm_state["thread"]
    if thread is None or not thread.is_alive():  # first use, or after a fork
        with _warm_lock:
            thread = _warm_state["thread"]
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=_warm_loop, name="convoy-cgroup-warm", daemon=True)
                _warm_state["thread"] = thread
                thread.start()
    _warm_wake.set()


@functools.cache  # read once per process, like the rest of the host's cgroup layout
def _favor_dynmods() -> bool:
    """Is a cgroup hierarchy mounted with `favordynmods` (moves then skip the RCU wait)?"""
    try:
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return False
    return any(
        len(f) > 3 and f[2].startswith("cgroup") and "favordynmods" in f[3].split(",")
        for f in mounts
    )


def _warm_due() -> bool:
    try:
        return time.time() - os.stat(WARM_FILE, follow_symlinks=False).st_mtime < WARM_LINGER_S
    except OSError:
        return False


def _warm_loop() -> None:
    path = ROOT / "pids" / _own_path("pids").lstrip("/") / "tasks"
    tid = str(threading.get_native_id())  # not 0: writing 0 (oneself) skips the lock
    try:
        fd = os.open(WARM_FILE, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    while True:
        _warm_wake.wait()
        _warm_wake.clear()
        while _warm_due():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process warms; take over if it stops early
                time.sleep(WARM_STANDBY_S)
                continue
            try:
                while _warm_due():
                    with open(path, "w") as f:
                        f.write(tid)
                    time.sleep(WARM_EVERY_S)
            except OSError:
                return  # no cgroup v1 pids hierarchy to use: nothing to keep warm
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
