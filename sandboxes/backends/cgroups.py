"""Per-sandbox cgroups for the local engines: memory, process count and CPU limits.

bubblewrap has no limits of its own and RLIMIT_NPROC does not bind root-owned processes, so
the fork bomb and memory hog limits come from a cgroup made for each sandbox (v1 controllers
or a delegated v2 subtree, whichever the host has). Where neither can be written the sandbox
still gets rlimits; `cgroup_create` then returns an empty list.

Starting a sandbox fast: a terminated sandbox's cgroups are kept as a spare for the next one
(`cgroup_recycle` / `cgroup_claim`), and on cgroup v1 a command is born in its cgroups
(`spawn_inside`) instead of being moved there, which would wait on a host-wide lock.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sandboxes.backends.base import SandboxError

log = logging.getLogger(__name__)

T = TypeVar("T")
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
            limits = _v1_limits(memory_bytes=memory_bytes, pids_max=pids_max, cpu=cpu)
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


def _v1_limits(*, memory_bytes: int, pids_max: int, cpu: float) -> dict[str, dict[str, str]]:
    return {
        "memory": {"memory.limit_in_bytes": str(memory_bytes), "memory.swappiness": "0"},
        "pids": {"pids.max": str(pids_max)},
        "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(int(cpu * 1e5))},
    }


# --- spares: a terminated sandbox's cgroups, kept for the next one --------------------------
# Making a sandbox's cgroups (a memory cgroup above all) costs a few tenths of a millisecond
# of kernel time; renaming one costs a few microseconds. So on cgroup v1, where a cgroup can be
# renamed within its parent, a terminate empties the sandbox's cgroups and keeps them, renamed
# `convoy-<owner>-spare-<pid>-<token>`, and this process's next sandbox claims them: it only
# rewrites the limits that differ. The reaper removes spares whose process is gone.
SPARES = 2
_spares: dict[int, list[tuple[list[str], dict[str, dict[str, str]]]]] = {}  # by process


def _spares_here() -> list[tuple[list[str], dict[str, dict[str, str]]]]:
    pid = os.getpid()
    if pid not in _spares:  # first use, or a forked worker: its parent's spares are not its own
        _spares.clear()
        _spares[pid] = []
        atexit.register(spares_drop)
    return _spares[pid]


def spare_pid(path: str, owner: str) -> int:
    """The process a spare cgroup is kept for (0: not a spare)."""
    rest = os.path.basename(path).removeprefix(f"{PREFIX}{owner}-")
    if not rest.startswith("spare-"):
        return 0
    try:
        return int(rest.split("-")[1])
    except (IndexError, ValueError):
        return 0


def cgroup_recycle(paths: list[str], *, owner: str, limits: dict | None = None) -> None:
    """Empty the cgroups and keep them as a spare for this process (else remove them).

    Only for a sandbox whose commands this process started: no other process can be about to
    start one in them (a command already on its way is killed with the rest, and the launch
    lock keeps this process's launcher out while they are emptied and renamed; after that,
    joining them by their old name fails)."""
    spares = _spares_here()
    if not paths or _v2() or len(spares) >= SPARES or limits is None:
        cgroup_remove(paths)
        return
    with _launch_lock():
        _recycle(paths, owner=owner, limits=limits, spares=spares)


def _recycle(paths: list[str], *, owner: str, limits: dict, spares: list) -> None:
    if cgroup_kill(paths):  # something would not die: never hand it to another sandbox
        cgroup_remove(paths)
        return
    leaf = f"{PREFIX}{owner}-spare-{os.getpid()}-{secrets.token_hex(4)}"
    renamed: list[str] = []
    try:
        for path in paths:
            target = os.path.join(os.path.dirname(path), leaf)
            os.rename(path, target)
            _fds_moved(path, target)
            renamed.append(target)
    except OSError:
        cgroup_remove([*renamed, *paths[len(renamed) :]])
        return
    spares.append((renamed, _v1_limits(**limits)))


def cgroup_claim(
    name: str, *, memory_bytes: int, pids_max: int, cpu: float, owner: str = ""
) -> list[str] | None:
    """A spare renamed for sandbox `name` with these limits, or None (make new ones)."""
    spares = _spares_here()
    want = _v1_limits(memory_bytes=memory_bytes, pids_max=pids_max, cpu=cpu)
    leaf = _leaf(name, owner)
    while spares:
        paths, held = spares.pop()
        claimed: list[str] = []
        try:
            for path in paths:
                target = f"{path.rsplit('/', 1)[0]}/{leaf}"
                os.rename(path, target)
                _fds_moved(path, target)
                claimed.append(target)
            if held != want:
                for target in claimed:
                    controller = target[len(str(ROOT)) + 1 :].split("/", 1)[0]
                    for fname, value in want.get(controller, {}).items():
                        if held.get(controller, {}).get(fname) != value:
                            required = fname != "memory.swappiness"
                            _write(Path(target, fname), value, required=required)
        except OSError:
            cgroup_remove([*claimed, *paths[len(claimed) :]])
            continue
        return claimed
    return None


def spares_reap(owner: str | None = None) -> list[str]:
    """Remove the spares (of `owner`'s installation, or of any) whose process is gone."""
    bases = [ROOT / _own_path("").lstrip("/")] if _v2() else []
    if not _v2():
        bases = [ROOT / c / _own_path(c).lstrip("/") for c in V1_CONTROLLERS]
    removed = []
    for base in bases:
        with contextlib.suppress(OSError):
            for path in base.glob(f"{PREFIX}{owner or '*'}-spare-*"):
                pid = spare_pid(str(path), path.name[len(PREFIX) :].split("-", 1)[0])
                if pid and not Path(f"/proc/{pid}").exists():
                    cgroup_remove([str(path)])
                    removed.append(str(path))
    return removed


def spares_drop() -> None:
    """Remove this process's spares (at its exit; the reaper removes a dead process's)."""
    spares = _spares_here()
    while spares:
        cgroup_remove(spares.pop()[0])


def _write(path: Path, value: str, *, required: bool = True) -> None:
    try:
        path.write_text(value)
    except OSError:
        if required:
            raise


# --- born inside: forking from a thread that is in the sandbox's cgroups --------------------
# Moving another task into a cgroup (`cgroup_enter` with a pid) takes a host-wide lock that,
# after a quiet spell, first waits for an RCU grace period (8-16 ms here). A thread moving
# *itself* into a v1 cgroup (writing 0 to `tasks`) skips that lock, and what a thread forks is
# born in that thread's cgroups. So on cgroup v1 a sandbox command is spawned by this process's
# launcher thread while it sits in the sandbox's cgroups: no move of the command at all, and no
# wait. The launcher is not the thread-group leader, so the worker's own memory stays charged
# to the worker's memory cgroup (a leader's move would take the whole process's charges with
# it, and make the worker an OOM candidate of the sandbox). The `tasks` files are kept open:
# opening one costs more than the move.
_fds: dict[int, dict[str, int]] = {}  # by process: `tasks` files, by cgroup directory
_launchers: dict[int, ThreadPoolExecutor] = {}  # by process
_launch_locks: dict[int, threading.RLock] = {}  # by process: a launch against a recycle


def _launch_lock() -> threading.RLock:
    pid = os.getpid()
    lock = _launch_locks.get(pid)
    if lock is None:  # first use, or a forked worker (a lock its parent held stays held)
        for other in [p for p in _launch_locks if p != pid]:
            _launch_locks.pop(other, None)
        lock = _launch_locks.setdefault(pid, threading.RLock())  # atomic: one per process
    return lock


FDS_KEPT = 64


def _fds_here() -> dict[str, int]:
    pid = os.getpid()
    if pid not in _fds:  # first use, or a forked worker: the inherited copies are not needed
        for inherited in _fds.values():
            for fd in inherited.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        _fds.clear()
        _fds[pid] = {}
    return _fds[pid]


def _tasks_fd(path: str) -> int:
    fds = _fds_here()
    fd = fds.get(path)
    if fd is None:
        if len(fds) >= FDS_KEPT:  # cgroups removed by another process, never used again here
            for old in list(fds)[: FDS_KEPT // 2]:
                with contextlib.suppress(OSError, KeyError):
                    os.close(fds.pop(old))
        fd = fds[path] = os.open(os.path.join(path, "tasks"), os.O_WRONLY | os.O_CLOEXEC)
    return fd


def _fds_close(paths: list[str]) -> None:
    # Under the launch lock: a launch must never write to a number closed (and reused) here.
    with _launch_lock():
        fds = _fds_here()
        for path in paths:
            fd = fds.pop(path, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _fds_moved(old: str, new: str) -> None:
    """A renamed cgroup keeps its open `tasks` file."""
    fds = _fds_here()
    if old in fds:
        fds[new] = fds.pop(old)


def spawn_inside(
    paths: list[str], spawn: Callable[[], T], abandon: Callable[[], None]
) -> Future[T] | None:
    """Call `spawn` (it forks) on the launcher thread while that thread is in the cgroups, so
    everything it forks is born there; `abandon` instead if the thread cannot join them (the
    future then raises SandboxError). Returns at once: the caller may go on with the child
    (once it is born) and must wait for the future before anything else. None where the host
    cannot (cgroup v2 moves whole processes only, or no cgroups): the caller then spawns
    itself and moves its child with `cgroup_enter`.

    The launcher returns from its fork late (it shares the sandbox's CPU group with its child,
    which runs first): the caller need not wait for it to set up the child, and does not."""
    if not paths or _v2() or not _can_leave():
        return None
    pid = os.getpid()
    if pid not in _launchers:
        _launchers.clear()
        _launchers[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convoy-launch")
    return _launchers[pid].submit(_spawn_in, paths, spawn, abandon)


@functools.cache
def _can_leave() -> bool:
    """Can a thread of ours move back into the worker's own cgroups? (A no-op move of this
    thread there.) Where it cannot, a launcher that joined a sandbox's cgroups would be stuck
    in them: commands are moved in by pid instead."""
    try:
        for c in _v1_present():
            with open(ROOT / c / _own_path(c).lstrip("/") / "tasks", "w") as f:
                f.write("0")
    except OSError as exc:
        log.warning("cannot move threads between cgroups (%s); moving commands by pid", exc)
        return False
    return True


def _spawn_in(paths: list[str], spawn: Callable[[], T], abandon: Callable[[], None]) -> T:
    own = [str(ROOT / c / _own_path(c).lstrip("/")) for c in _v1_present()]
    with _launch_lock():
        return _join_spawn_leave(paths, spawn, abandon, own)


def _join_spawn_leave(
    paths: list[str], spawn: Callable[[], T], abandon: Callable[[], None], own: list[str]
) -> T:
    try:
        try:
            for path in paths:
                os.write(_tasks_fd(path), b"0")
        except OSError as exc:  # removed under us: the sandbox is being terminated
            abandon()
            raise SandboxError(f"cannot join the sandbox's cgroup {path}: {exc}") from exc
        return spawn()
    finally:
        for path in own:  # back where the worker is (never fails: it is our own cgroup)
            os.write(_tasks_fd(path), b"0")


def cgroup_enter(paths: list[str], pid: int = 0) -> None:
    """Move a process (default: the calling one) into the cgroups."""
    for path in paths:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid or os.getpid()))


def cgroup_pids(paths: list[str]) -> set[int]:
    """The processes in the cgroups. Not a worker whose launcher thread is in one for a moment
    (cgroup v1 lists a process when any of its threads is in): it is never the sandbox's."""
    pids: set[int] = set()
    for path in paths:
        with contextlib.suppress(OSError):
            listed = {int(p) for p in _small_read(os.path.join(path, "cgroup.procs")).split()}
            pids.update(p for p in listed if _v2() or _leader_in(p, path))
    return pids


def _small_read(path: str) -> bytes:
    """A small kernel file's bytes in three system calls (`open()`'s buffered file adds five:
    the teardown thread reads these while the worker's next run wants the interpreter)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _leader_in(pid: int, path: str) -> bool:
    """Is the process itself (its main thread) in the v1 cgroup at `path`?"""
    controller, *rest = Path(path).relative_to(ROOT).parts
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return True  # gone, or not ours to read: kill() will say
    for line in lines:
        _, controllers, where = line.split(":", 2)
        if controller in controllers.split(","):
            return where == "/" + "/".join(rest)
    return True


# Counters that grow each time a limit is hit: (file, line key, limit kind). pids.events is in
# both hierarchies; the OOM kill count is memory.events on v2, memory.oom_control on v1.
LIMIT_COUNTERS = (
    ("pids.events", "max", "pids"),
    ("memory.events", "oom_kill", "memory"),
    ("memory.oom_control", "oom_kill", "memory"),
)


def limit_counters(paths: list[str]) -> dict[str, int]:
    """How often each limit ("pids", "memory") of these cgroups has been hit so far; a limit
    whose counter cannot be read is missing. A few small reads: cheap enough per command."""
    found: dict[str, int] = {}
    for path in paths:
        for fname, key, kind in LIMIT_COUNTERS:
            try:
                with open(os.path.join(path, fname), "rb") as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                name, _, value = line.partition(b" ")
                if name == key.encode() and value.strip().isdigit():
                    found[kind] = found.get(kind, 0) + int(value)
    return found


def engine_cgroups(name: str) -> list[str]:
    """The cgroups an engine (runsc) made for its container `name` where they exist: at the
    hierarchy's root, or beside this process's own."""
    found = []
    for base in [ROOT] if _v2() else [ROOT / c for c in V1_CONTROLLERS]:
        for parent in {base, base / _own_path("" if _v2() else base.name).lstrip("/")}:
            if (parent / name).is_dir():
                found.append(str(parent / name))
    return found


def cgroup_kill(paths: list[str], *, timeout: float = 5.0) -> set[int]:
    """SIGKILL every process in the cgroups until they are empty (forks race the killer); the
    processes still there at the deadline (none when they emptied)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(paths)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def cgroup_remove(paths: list[str]) -> None:
    if not paths:
        return
    _fds_close(paths)
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


@functools.cache  # read once per process, like the rest of the host's cgroup layout
def favor_dynmods() -> bool:
    """Is a cgroup hierarchy mounted with `favordynmods` (moves then skip the RCU wait)?"""
    try:
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return False
    return any(
        len(f) > 3 and f[2].startswith("cgroup") and "favordynmods" in f[3].split(",")
        for f in mounts
    )


def launch_mode() -> str:
    """How a sandbox's first process gets into its cgroups on this host, for operators."""
    if not _v2():
        return "cgroup v1: commands are born in their sandbox's cgroups (no move, no wait)"
    tuned = "on" if favor_dynmods() else "off (make host-tune)"
    return f"cgroup v2: each command's first process is moved in by pid; favordynmods {tuned}"
