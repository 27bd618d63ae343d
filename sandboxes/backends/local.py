"""What the local engines (gVisor, bubblewrap, plain process) share: workspaces, limits, pumping.

A local sandbox is a directory under the data dir (see `sandboxes.workspaces`) plus whatever
the engine keeps running; each exec is a child process whose pipes are pumped here into
ordered (stream, bytes) events with a wall-clock timeout and an output cap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import resource
import selectors
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterator, Mapping, Sequence
from pathlib import Path

from sandboxes.backends import cgroups
from sandboxes.backends.base import (
    FILES_DIR,
    Capability,
    ExecEvent,
    ExecOutput,
    ExecResult,
    NetworkPolicy,
    NotSupported,
    SandboxBackend,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SnapshotHandle,
)
from sandboxes.backends.egress import egress_env, egress_extra
from sandboxes.backends.host_user import Owner, UidClaims
from sandboxes.backends.images import (
    HOME_IN_WORKSPACE,
    image_env,
    image_extra,
    tools_home_make,
)
from sandboxes.trash import dir_unlock
from sandboxes.workspaces import Meta, Workspaces, meta_owner, workspace_read, workspace_write

TIMEOUT_EXIT = 124  # what `timeout(1)` returns; every backend reports a timeout with it
KILL_GRACE_S = 5.0  # after a kill, how long to wait for the pipes to close
WATCH_EVERY_S = 0.25  # how often a running command's workspace size is checked, at most
# The walks that measure a workspace may take at most this share of the time: where one walk
# takes longer than WATCH_EVERY_S * WALK_SHARE_MAX (a large repository), the next waits for
# 1 / WALK_SHARE_MAX times its cost. A 50,000-file checkout takes about 0.2 s to walk, which
# every WATCH_EVERY_S kept a CPU 42-48% busy for as long as a command ran (docs/benchmarks.md).
WALK_SHARE_MAX = 0.05
WALKS_KEPT = 256  # sandboxes whose last walk a backend remembers (the oldest is forgotten)
SIGXFSZ_EXIT = 128 + signal.SIGXFSZ  # a write past RLIMIT_FSIZE (the disk limit) killed it
# A command that ends with its workspace past the disk limit fails with this code, as a write
# past RLIMIT_FSIZE does: a filler faster than the watch (3 GB in 108 ms) exited 0.
DISK_LIMIT_EXIT = SIGXFSZ_EXIT
# Files and directories a workspace may hold: empty files allocate no blocks, so the byte count
# alone let 200,000 of them through at disk_mb=16. Each entry counts as one 4 KB block of the
# disk limit (what a small file takes on ext4), with a floor for small limits.
ENTRY_BYTES = 4096
ENTRIES_MIN = 65_536
# What shells, git, make, Go and Python's subprocess print when fork fails with EAGAIN: the only
# sign of the process limit where the engine keeps no counter (gVisor's RLIMIT_NPROC).
FORK_FAILED = re.compile(
    rb"(?i)(?:cannot|can't|could not|unable to) v?fork"
    rb"|v?fork(?:\(\))?: (?:retry: )?resource temporarily unavailable"
    rb"|fork/exec [^\n]*: resource temporarily unavailable"
)
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/workspace",
    # UTF-8 text, as LANG=C.UTF-8 gives, with every other category C (which C.UTF-8 defines
    # alike): each process then loads one locale file, not thirteen. Under gVisor each open
    # goes through its gofer: LANG cost the sed campaign's processes 12% more CPU
    # (docs/benchmarks.md, session 13).
    "LC_CTYPE": "C.UTF-8",
    "TMPDIR": "/tmp",  # noqa: S108 (the sandbox's own tmpfs)
}


@functools.lru_cache(maxsize=8)
def install_id(data_dir: Path) -> str:
    """A short tag that tells this installation's sandboxes from another's on one host (kept:
    resolving the path was 2% of a run's Python time, once per sandbox)."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]


def truncation_marker(cap: int) -> bytes:
    return f"\n[convoy: output truncated after {cap} bytes; command stopped]\n".encode()


def exit_code_of(returncode: int) -> int:
    """A signal death becomes 128+signal, as a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode


def pump(
    proc: subprocess.Popen,
    *,
    timeout_s: float | None,
    output_cap: int,
    kill: Callable[[], None],
    started: float,
    watch: Callable[[], str] | None = None,
) -> Generator[ExecEvent, None, None]:
    """Yield the child's output as it comes (both pipes, in arrival order), then its result.

    `watch`, called every WATCH_EVERY_S while the command runs, returns why to stop it ("" to
    let it go on): the reason goes out as a marker on stderr and the command is killed.
    """
    sel = selectors.DefaultSelector()
    for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        os.set_blocking(pipe.fileno(), False)
        sel.register(pipe.fileno(), selectors.EVENT_READ, name)
    deadline = started + timeout_s if timeout_s else None
    total = 0
    timed_out = truncated = False
    killed_at: float | None = None
    finished = False
    next_watch = started + WATCH_EVERY_S
    try:
        while sel.get_map():
            now = time.monotonic()
            if deadline is not None and killed_at is None and now >= deadline:
                timed_out = True
                kill()
                killed_at = now
            if watch is not None and killed_at is None and now >= next_watch:
                next_watch = now + WATCH_EVERY_S
                why = watch()
                if why:
                    yield ExecOutput("stderr", f"\n[convoy: {why}; command stopped]\n".encode())
                    kill()
                    killed_at = now
            if killed_at is not None and now - killed_at > KILL_GRACE_S:
                break  # something still holds the pipes open; the kill has been sent
            wait = WATCH_EVERY_S if watch is not None else 0.5
            if deadline is not None and killed_at is None:
                wait = max(0.0, min(wait, deadline - now))
            for key, _ in sel.select(wait):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                if truncated:
                    continue
                if total + len(data) > output_cap:
                    data = data[: output_cap - total]
                    truncated = True
                total += len(data)
                if data:
                    yield ExecOutput(key.data, data)
                if truncated:
                    marker = truncation_marker(output_cap)
                    yield ExecOutput("stderr", marker)
                    kill()
                    killed_at = time.monotonic()
        if watch is not None and killed_at is None:
            # A command can outrun the watch: a disk filler may bring the engine down (gVisor's
            # kernel caches what it writes) before the next look. Say why it ended all the same.
            why = watch()
            if why:
                yield ExecOutput("stderr", f"\n[convoy: {why}]\n".encode())
        try:
            returncode = proc.wait(timeout=KILL_GRACE_S if killed_at else None)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
        finished = True
        yield ExecResult(
            exit_code=TIMEOUT_EXIT if timed_out else exit_code_of(returncode),
            timed_out=timed_out,
            truncated=truncated,
            duration_ms=int((time.monotonic() - started) * 1000),
            bytes_out=total,
        )
    finally:
        sel.close()
        if not finished and proc.poll() is None:  # the caller stopped listening: stop it
            kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_GRACE_S)
        for pipe in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()


def wait_exact(proc: subprocess.Popen, timeout: float) -> int:
    """`proc.wait(timeout)` without its polling: Popen's timed wait sleeps in steps that grow to
    50 ms, so a 120 ms `runsc run` came back after 165 ms. A pidfd wakes us when it exits."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here (old kernel), or the child is reaped
        return proc.wait(timeout=timeout)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(pidfd, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def seconds_since_boot() -> float:
    """The clock of a process's start time in /proc (the boot-time clock)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _started_at(pid: str) -> float:
    """When the process started, in seconds since boot (field 22 of its stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def processes_kill(
    *,
    all_of: Sequence[str],
    any_of: Collection[str] | None = None,
    started_before: float | None = None,
) -> list[int]:
    """SIGKILL every host process whose argv holds each of `all_of` (and, when given, one of
    `any_of`, and that started before `started_before`, in `seconds_since_boot`); return their
    pids. The last resort for engine processes no cgroup or process group reaches, such as
    those of a worker that died while starting them."""
    want = {a.encode() for a in all_of}
    some = None if any_of is None else {a.encode() for a in any_of}
    killed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = set(f.read().split(b"\0"))
            if (
                started_before is not None
                and want <= args
                and _started_at(entry.name) >= started_before
            ):
                continue  # started since the caller looked: not its to kill
        except OSError:
            continue
        if want <= args and (some is None or some & args):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def entries_max_for(disk_mb: int) -> int:
    """How many files and directories a workspace of `disk_mb` may hold."""
    return max(disk_mb * 1024 * 1024 // ENTRY_BYTES, ENTRIES_MIN)


def disk_usage(path: Path, *, stop_after: int) -> int:
    """Bytes allocated under `path` (see `workspace_usage`)."""
    return workspace_usage(path, stop_after=stop_after)[0]


def workspace_usage(
    path: Path, *, stop_after: int, entries_max: int | None = None
) -> tuple[int, int]:
    """Bytes allocated under `path` and entries (files, directories, links…) found there, not
    following links; counting stops past `stop_after` bytes or `entries_max` entries.

    The command is running meanwhile: between its parent's listing and its own, a directory can
    become a link to a host directory, and the host (root, perhaps) must not list or size what
    the link names. So a directory is listed through a descriptor, and only when it is the
    very inode (device and number) its parent listed; one that changed is left out of this
    walk (the next walk sees it), as is one removed while it is listed (the listing fails).

    A worker that is not root runs the command as itself, so a directory the command locked
    (`chmod 000`, or no search bit) is locked to the walk too: the walker, its owner, gives
    it rwx for its owner (`trash.dir_unlock`: through its parent's descriptor, never following
    a link) and lists it again. One that still cannot be listed or sized counts the workspace
    as past `stop_after`: what cannot be seen is not let past the limit."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        top = os.lstat(path)
    except OSError:
        return 0, 0
    total = found = 0
    entries_max = float("inf") if entries_max is None else entries_max
    stack = [(str(path), top.st_dev, top.st_ino)]
    while stack:
        where, dev, ino = stack.pop()
        try:
            fd = _dir_open(where, (dev, ino), flags)
        except PermissionError:
            return max(total, stop_after + 1), found
        if fd is None:
            continue
        try:
            opened = os.fstat(fd)
            if opened.st_ino != ino or opened.st_dev != dev:
                continue
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        st = _entry_stat(entry, fd, opened)
                    except PermissionError:
                        return max(total, stop_after + 1), found
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    found += 1
                    if stat.S_ISDIR(st.st_mode):
                        stack.append((f"{where}/{entry.name}", st.st_dev, st.st_ino))
                    if total > stop_after or found > entries_max:
                        return total, found
        except PermissionError:
            return max(total, stop_after + 1), found
        except OSError:
            continue  # removed while listed (EINVAL, ENOENT from getdents): as if it changed
        finally:
            os.close(fd)
    return total, found


def _entry_stat(entry: os.DirEntry, fd: int, opened: os.stat_result) -> os.stat_result:
    """`entry`'s own stat; in a directory its owner (this process) can list but not search
    (`chmod 400`), after giving the owner rwx on it."""
    try:
        return entry.stat(follow_symlinks=False)
    except PermissionError:
        if opened.st_uid != os.geteuid():
            raise
    os.fchmod(fd, stat.S_IMODE(opened.st_mode) | 0o700)
    return os.stat(entry.name, dir_fd=fd, follow_symlinks=False)


def _dir_open(where: str, inode: tuple[int, int], flags: int) -> int | None:
    """A descriptor for listing the directory `where` (None if it went); one its owner, this
    process, locked is given rwx for its owner and opened again. PermissionError if it is
    still locked."""
    try:
        return os.open(where, flags)
    except PermissionError:
        pass
    except OSError:
        return None
    parent, name = os.path.split(where)
    try:
        parent_fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        raise PermissionError(f"{where}: cannot be listed") from None
    try:
        with contextlib.suppress(OSError):
            mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
            dir_unlock(parent_fd, name, mode=stat.S_IMODE(mode) | 0o700, inode=inode)
        try:
            return os.open(name, flags, dir_fd=parent_fd)
        except PermissionError:
            raise
        except OSError:
            return None  # gone, or a link now (O_NOFOLLOW): as if it changed
    finally:
        os.close(parent_fd)


@dataclasses.dataclass
class WalkCost:
    """A sandbox's last workspace walk: how long it took, when it ended (monotonic), the size
    and entries it found and the file system's free bytes and inodes just before it."""

    cost_s: float = 0.0
    ended_at: float = float("-inf")
    size: int = 0
    entries: int = 0
    free: float = float("inf")
    free_files: float = float("inf")


def free_bytes(path: Path) -> float:
    """Bytes an unprivileged writer may still use on `path`'s file system (inf if unknown)."""
    return free_space(path)[0]


def free_space(path: Path) -> tuple[float, float]:
    """Bytes and inodes an unprivileged writer may still use on `path`'s file system (inf if
    unknown, or where it does not count inodes)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return float("inf"), float("inf")
    return st.f_bavail * st.f_frsize, (st.f_favail if st.f_files else float("inf"))


def rlimits_for(limits: Mapping, *, address_space: bool) -> list[tuple[int, int]]:
    """Limits that hold even where cgroups are missing: file size, CPU time, processes…"""
    cpu_s = int(limits.get("timeout_s", 3600)) + 5
    found = [
        (resource.RLIMIT_FSIZE, int(limits.get("disk_mb", 2048)) * 1024 * 1024),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 4096),
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_NPROC, int(limits.get("pids_max", 256))),
    ]
    if address_space:
        found.append((resource.RLIMIT_AS, int(limits.get("memory_mb", 1024)) * 1024 * 1024 * 2))
    return found


def rlimits_apply(limits: Mapping, *, address_space: bool, pid: int = 0) -> None:
    """Set the limits on `pid` (0: the calling process, e.g. a child before exec)."""
    for which, value in rlimits_for(limits, address_space=address_space):
        resource.prlimit(pid, which, (value, value))


def files_write(target: Path, files: Mapping[str, bytes]) -> None:
    """The spec's files on the host; the engines bind their directory read-only."""
    target.mkdir(mode=0o755)
    for name, content in files.items():
        path = target / name
        path.write_bytes(content)
        path.chmod(0o444)


def limits_of(spec: SandboxSpec) -> dict:
    return {
        "cpu": spec.cpu,
        "memory_mb": spec.memory_mb,
        "pids_max": spec.pids_max,
        "disk_mb": spec.disk_mb,
        "timeout_s": spec.timeout_s,
        "idle_timeout_s": spec.idle_timeout_s,
    }


class LocalBackend(SandboxBackend):
    """Shared machinery; subclasses start the engine (`_start`/`_stop`) and build exec argv."""

    capabilities = Capability.STREAMED_EXEC | Capability.SNAPSHOT
    id_prefix = "local"

    def __init__(self, data_dir: Path | None = None) -> None:
        if data_dir is None:
            from django.conf import settings

            data_dir = Path(settings.DATA_DIR)
        self.data_dir = Path(data_dir)
        self.ws = Workspaces(self.data_dir / "sandboxes")
        self.install = install_id(self.data_dir)
        self._walks: dict[str, WalkCost] = {}  # per sandbox: its disk watch's last walk
        self._walks_lock = threading.Lock()  # variants' threads start commands side by side
        # Which host user each run's sandboxes run as, where not the worker's (`host_user`).
        self.claims: UidClaims | None = None

    # --- engine hooks -----------------------------------------------------------------------
    def _start(self, meta: Meta) -> None:
        """Bring the engine up for a new sandbox (cgroups, containers)."""

    def _stop(self, meta: Meta) -> None:
        """Stop everything the sandbox runs; must tolerate a half-started sandbox."""

    def _popen(
        self, meta: Meta, argv: Sequence[str], cwd: str, env: dict[str, str], *, last: bool = False
    ) -> tuple[subprocess.Popen, Callable[[], None]]:
        raise NotImplementedError

    def _cgroups_release(self, meta: Meta) -> None:
        """The sandbox is stopped: free its cgroups."""
        cgroups.cgroup_remove(meta.cgroups)

    def _owner_changed(self, meta: Meta) -> None:
        """The sandbox runs as another host user now (`owner_adopt`): what the engine gave
        the old one beside the workspace (bwrap: the egress proxy's socket)."""

    # --- host users: one per run (`host_user`) ----------------------------------------------
    def _owner_take(self, meta: Meta) -> None:
        """The host user a new sandbox runs as, in `meta.extra`: a fork's is its snapshot's
        (the layer's files are that user's: one stat, no walk), anything else claims its own."""
        if self.claims is None:
            return
        holder = self.ws.dir(meta.external_id)
        uid = self.ws.layer_uid(meta.layers[0]) if meta.layers else None
        ids = self.claims.ids
        if uid is not None and ids.first <= uid <= ids.last:
            self.claims.hold(uid, holder)
        else:  # a source sandbox (or a snapshot from before per-run users)
            uid = self.claims.claim(holder)[0]
        meta.extra["host_uid"] = uid

    def _owner_release(self, meta: Meta) -> None:
        if self.claims is not None and (owner := meta_owner(meta)) is not None:
            self.claims.release(owner[0], self.ws.dir(meta.external_id))

    def owner_claim(self, holder: Path) -> Owner | None:
        """A host user for a checkout made before its sandboxes exist (`repos.checkout_ahead`),
        held by `holder` (the staged checkout) until `owner_adopt` or `owner_release`; None
        where sandboxes run as the worker."""
        return None if self.claims is None else self.claims.claim(holder)

    def owner_release(self, owner: Owner | None, holder: Path) -> None:
        if self.claims is not None and owner is not None:
            self.claims.release(owner[0], holder)

    def owner_adopt(self, handle: SandboxHandle, owner: Owner) -> None:
        """Run a new sandbox as `owner` (claimed by `owner_claim` for the checkout made ahead
        for it, before any of its commands ran) instead of the user it claimed; that claim
        is released. Its directory, workspace and tools area are given to `owner`."""
        meta = self.ws.meta_read(handle.external_id)
        old = meta_owner(meta)
        if self.claims is None or old is None or old == owner:
            return
        base = self.ws.dir(handle.external_id)
        self.claims.hold(owner[0], base)
        meta.extra["host_uid"] = owner[0]
        self.ws.owner_give(base, owner)
        if meta.extra.get("tools_home"):  # made at its create, for the old user
            with contextlib.suppress(FileNotFoundError):
                os.chown(base / "workspace" / HOME_IN_WORKSPACE, *owner, follow_symlinks=False)
        self._owner_changed(meta)
        self.ws.meta_write(meta)
        self.claims.release(old[0], base)

    # --- lifecycle ------------------------------------------------------------------------
    def _check(self, spec: SandboxSpec) -> None:
        if spec.network == NetworkPolicy.ALLOWLIST:
            # sandboxes.services turns an allowlist into egress_socket on engines that relay.
            raise NotSupported(
                f"{self.name}: a network allowlist goes through Convoy's egress proxy "
                "(sandbox_create passes egress_socket to engines that relay); else use none"
            )
        if spec.gpu:
            raise NotSupported(f"{self.name} has no GPUs")
        if spec.egress_socket and Capability.EGRESS_PROXY not in self.capabilities:
            raise NotSupported(f"{self.name} cannot relay to the egress proxy")
        if spec.workdir != "/workspace" and not spec.workdir.startswith("/workspace/"):
            raise SandboxError(f"workdir must be inside /workspace, got {spec.workdir!r}")

    def _make(
        self, spec: SandboxSpec, layers: list[str], *, extra: dict | None = None
    ) -> SandboxHandle:
        self._check(spec)
        egress = {**egress_extra(spec), **image_extra(spec)}
        now = time.time()
        meta = Meta(
            external_id=self.ws.new_id(self.id_prefix),
            backend=self.name,
            labels={**spec.labels, "convoy_install": self.install},
            limits=limits_of(spec),
            env={
                **spec.env,
                **({"CONVOY_FILES": FILES_DIR} if spec.files else {}),
                **egress_env(spec),
                **image_env(spec),
            },
            network=str(spec.network),
            created_at=now,
            deadline_at=now + spec.timeout_s,
            layers=list(layers),
            extra={**(extra or {}), **({"files": True} if spec.files else {}), **egress},
        )
        self.ws.etc()
        self._owner_take(meta)
        try:
            self.ws.create(meta)
            owner = meta_owner(meta)
            tools_home_make(self.ws.workspace(meta.external_id), meta.extra, owner=owner)
            if spec.files:
                files_write(self.files_path(meta.external_id), spec.files)
            self._start(meta)
            self.ws.meta_write(meta)
        except BaseException:
            with contextlib.suppress(Exception):
                self._stop(meta)
                self._cgroups_release(meta)
            try:
                self.ws.remove(meta.external_id)
            finally:
                self._owner_release(meta)
            raise
        return SandboxHandle(self.name, meta.external_id, dict(meta.labels))

    def create(self, spec: SandboxSpec) -> SandboxHandle:
        return self._make(spec, [])

    def attach(self, external_id: str) -> SandboxHandle:
        meta = self.ws.meta_read(external_id)
        return SandboxHandle(self.name, external_id, dict(meta.labels))

    def list(self, labels: Mapping[str, str]) -> list[SandboxHandle]:
        found = []
        for ext in self.ws.ids():
            try:
                meta = self.ws.meta_read(ext)
            except (SandboxError, ValueError, TypeError):
                continue
            wanted = all(meta.labels.get(k) == v for k, v in labels.items())
            if meta.backend == self.name and wanted:
                found.append(SandboxHandle(self.name, ext, dict(meta.labels)))
        return found

    def terminate(self, handle: SandboxHandle) -> None:
        with self._walks_lock:
            self._walks.pop(handle.external_id, None)
        try:
            meta = self.ws.meta_read(handle.external_id)
        except SandboxError:
            if self.ws.dir(handle.external_id).exists():
                self.ws.remove(handle.external_id)
            return
        self._stop(meta)
        self._cgroups_release(meta)
        self.ws.remove(handle.external_id)
        self._owner_release(meta)

    def files_path(self, external_id: str) -> Path:
        """The host directory behind the sandbox's read-only /convoy/files (beside, not in,
        its workspace: never part of a snapshot or a diff)."""
        return self.ws.dir(external_id) / "files"

    def workspace_path(self, handle: SandboxHandle) -> Path:
        """Where the sandbox's /workspace lives on the host (local backends only)."""
        return self.ws.workspace(handle.external_id)

    def workspace_owner(self, handle: SandboxHandle) -> Owner | None:
        """Whom the host gives what it puts in the sandbox's workspace (a checkout): the host
        user it runs as, where that is not the worker's own (`host_user`); else None."""
        return meta_owner(self.ws.meta_read(handle.external_id))

    # --- files ----------------------------------------------------------------------------
    def write_file(self, handle: SandboxHandle, path: str, data: bytes, mode: int = 0o644) -> None:
        meta = self.ws.meta_read(handle.external_id)
        workspace_write(
            self.ws.workspace(handle.external_id), path, data, mode, owner=meta_owner(meta)
        )

    def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        self.ws.meta_read(handle.external_id)
        return workspace_read(self.ws.workspace(handle.external_id), path)

    # --- exec -----------------------------------------------------------------------------
    def exec(
        self,
        handle: SandboxHandle,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        output_cap: int = 10 * 1024 * 1024,
        last: bool = False,
    ) -> Iterator[ExecEvent]:
        if not argv:
            raise SandboxError("argv must not be empty")
        meta = self.ws.meta_read(handle.external_id)
        cwd = cwd or "/workspace"
        if not (cwd == "/workspace" or cwd.startswith("/workspace/")) or ".." in cwd.split("/"):
            raise SandboxError(f"cwd must be inside /workspace, got {cwd!r}")
        remaining = meta.deadline_at - time.time()
        if remaining <= 0:
            raise SandboxError("the sandbox's wall-clock timeout has passed")
        timeout_s = min(timeout_s, remaining) if timeout_s else remaining
        full_env = {**BASE_ENV, **meta.env, **(env or {})}
        before = self._limit_counters(meta)
        disk_watch = self._disk_watch(meta)
        disk_hit: list[str] = []

        def watch(*, force: bool = False) -> str:
            why = disk_watch(force=force)
            if why:
                disk_hit.append(why)
            return why

        started = time.monotonic()
        proc, kill = self._popen(meta, list(argv), cwd, full_env, last=last)
        events = pump(
            proc,
            timeout_s=timeout_s,
            output_cap=output_cap,
            kill=kill,
            started=started,
            watch=watch,
        )
        return self._engine_checked(proc, self._limits_noted(meta, before, events, disk_hit, watch))

    # --- limits: which one a failed command ran into ------------------------------------------
    def _limit_counters(self, meta: Meta) -> dict[str, int]:
        """How often the sandbox has hit each limit so far ("pids", "memory"), where the
        engine keeps such counters (cgroups); read before and after each command."""
        return cgroups.limit_counters(meta.cgroups)

    def _limits_noted(
        self,
        meta: Meta,
        before: dict[str, int],
        events: Generator[ExecEvent, None, None],
        disk_hit: list[str],
        watch: Callable[..., str],
    ) -> Generator[ExecEvent, None, None]:
        """The events, with the result of a failed command saying which limit it hit: without
        it a fork bomb ends as a bare exit 2 and the log cannot say why. A failed command's
        workspace is measured once more, even where its last walk was too recent to repeat.
        A command whose workspace the watch found past the disk limit fails, even if it exited
        0 (`pump` looks once more as it ends): a filler faster than the watch cannot succeed."""
        tail = b""
        fork_failed = False
        try:
            for event in events:
                if isinstance(event, ExecOutput) and event.stream == "stderr" and not fork_failed:
                    window = tail + event.data  # a message split across two reads
                    fork_failed = bool(FORK_FAILED.search(window))
                    tail = window[-256:]
                elif isinstance(event, ExecResult):
                    if disk_hit and event.exit_code == 0:
                        event = dataclasses.replace(event, exit_code=DISK_LIMIT_EXIT)
                    if event.exit_code != 0:
                        if not disk_hit:
                            watch(force=True)
                        hit = self._limit_hit(
                            meta, before, event, disk=bool(disk_hit), fork_failed=fork_failed
                        )
                        if hit:
                            event = dataclasses.replace(event, limit_hit=hit)
                yield event
        finally:
            events.close()

    def _limit_hit(
        self,
        meta: Meta,
        before: dict[str, int],
        result: ExecResult,
        *,
        disk: bool,
        fork_failed: bool,
    ) -> str | None:
        after = self._limit_counters(meta)
        limits = meta.limits

        def grew(kind: str) -> bool:
            return after.get(kind, 0) > before.get(kind, 0)

        if grew("memory"):
            return f"memory limit reached (memory_mb={limits.get('memory_mb')})"
        if grew("pids") or fork_failed:
            return f"process limit reached (pids_max={limits.get('pids_max')})"
        if disk or result.exit_code == SIGXFSZ_EXIT:
            return f"disk limit reached (disk_mb={limits.get('disk_mb')})"
        return None

    def _engine_checked(
        self, proc: subprocess.Popen, events: Generator[ExecEvent, None, None]
    ) -> Iterator[ExecEvent]:
        """The events, but a result the engine itself failed to reach (the command never ran)
        is raised as a transient SandboxError, as a failed start is, instead of an exit code."""
        try:
            for event in events:
                if isinstance(event, ExecResult):
                    why = self._engine_failed(proc, event)
                    if why:
                        raise SandboxError(why, transient=True)
                yield event
        finally:
            events.close()  # a caller that stops listening stops the command (see `pump`)

    def _engine_failed(self, proc: subprocess.Popen, result: ExecResult) -> str:
        """Why the engine, not the command, produced `result` ("" when the command ran)."""
        return ""

    def _disk_watch(self, meta: Meta) -> Callable[..., str]:
        """The workspace's own writes (the overlay's upper layer, or the whole directory) may
        not pass the disk limit; RLIMIT_FSIZE alone only stops one big file.

        The returned watch walks the workspace unless its last walk (this command's or an
        earlier one's in the same sandbox) ended less than 1 / WALK_SHARE_MAX times that walk's
        cost ago; `force` walks regardless. A small workspace is walked at every call, as
        before; a large one at most WALK_SHARE_MAX of the time, or sooner when the file system
        has lost more free space since the last walk than the workspace had left below its
        limit (one `statvfs`): whatever wrote it, this workspace may have passed its limit.
        Likewise for entries (`entries_max_for`) and the file system's free inodes. A workspace
        the last walk found past a limit is walked again at every call, until it is back under.
        """
        base = self.ws.dir(meta.external_id)
        own = base / ("upper" if meta.layers and not meta.copied else "workspace")
        disk_mb = int(meta.limits.get("disk_mb", 2048))
        limit = disk_mb * 1024 * 1024
        entries_max = entries_max_for(disk_mb)
        with self._walks_lock:
            last = self._walks.get(meta.external_id)
            if last is None:
                if len(self._walks) >= WALKS_KEPT:  # a sandbox another process terminated
                    del self._walks[next(iter(self._walks))]
                last = self._walks[meta.external_id] = WalkCost()

        def watch(*, force: bool = False) -> str:
            started = time.monotonic()
            free, free_files = free_space(own)
            if (
                not force
                and started - last.ended_at < last.cost_s / WALK_SHARE_MAX
                and last.size <= limit
                and last.entries <= entries_max
                and free >= last.free - (limit - last.size)
                and free_files >= last.free_files - (entries_max - last.entries)
            ):
                return ""
            size, entries = workspace_usage(own, stop_after=limit, entries_max=entries_max)
            last.ended_at = time.monotonic()
            last.cost_s, last.size, last.entries = last.ended_at - started, size, entries
            last.free, last.free_files = free, free_files
            if size > limit:
                return f"the workspace passed its {disk_mb} MB disk limit"
            if entries > entries_max:
                return (
                    f"the workspace passed its limit of {entries_max:,} files and directories"
                    f" (disk_mb={disk_mb})"
                )
            return ""

        return watch

    # --- snapshots ------------------------------------------------------------------------
    def snapshot(self, handle: SandboxHandle) -> SnapshotHandle:
        meta = self.ws.meta_read(handle.external_id)
        layer = self.ws.snapshot(meta)
        if self.claims is not None and (owner := meta_owner(meta)) is not None:
            self.claims.hold(owner[0], self.ws.layers_dir / layer)  # for the run's forks
        return SnapshotHandle(self.name, layer)

    def create_from_snapshot(self, snapshot: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        return self._make(spec, self.ws.snapshot_layers(snapshot.external_id))

    def delete_snapshot(self, snapshot: SnapshotHandle) -> None:
        """Remove the layer once nothing mounts it; layers below it stay for their owners."""
        if snapshot.external_id in self.ws.layers_in_use(besides=snapshot.external_id):
            raise SandboxError(f"snapshot {snapshot.external_id} is still used by a sandbox")
        uid = self.ws.layer_uid(snapshot.external_id)
        self.ws.snapshot_remove(snapshot.external_id)
        if self.claims is not None and uid is not None:
            self.claims.release(uid, self.ws.layers_dir / snapshot.external_id)

    # --- reaping --------------------------------------------------------------------------
    def sweep(
        self, live: set[str], *, grace_s: float = 120, before: Callable[[str], None] | None = None
    ) -> list[str]:
        """Remove this installation's sandboxes that no live record names; return their ids.

        Sandboxes younger than `grace_s` are left alone: their record may not name them yet.
        `before(id)` is called before each is terminated (the reaper records it there: if that
        raises, the sweep stops and nothing more is removed).
        """
        removed = []
        for ext in self.ws.ids():
            try:
                meta = self.ws.meta_read(ext)
            except (SandboxError, ValueError, TypeError):
                continue
            if meta.backend != self.name or ext in live or time.time() - meta.created_at < grace_s:
                continue
            if before is not None:
                before(ext)
            self.terminate(SandboxHandle(self.name, ext, dict(meta.labels)))
            removed.append(ext)
        cgroups.spares_reap(self.install)  # kept for a process that is gone
        # Cgroups whose sandbox is gone. Listed before the directories: a sandbox's directory
        # is made before its cgroups, so any cgroup listed here whose sandbox is live has its
        # directory listed below, even if another worker made it a moment ago (listed the
        # other way round, such a sandbox's cgroups were removed, its commands killed).
        owned = cgroups.cgroups_owned(self.install)
        remaining = set(self.ws.ids())
        for path in owned:
            if cgroups.spare_pid(path, self.install):
                continue  # a spare of a live process, for its next sandbox
            if path.rsplit(f"-{self.install}-", 1)[-1] not in remaining:
                cgroups.cgroup_remove([path])
        for ext in self.ws.ids():  # directories a crash left before their meta.json
            base = self.ws.dir(ext)
            if not (base / "meta.json").exists() and time.time() - base.stat().st_mtime > grace_s:
                self.ws.remove(ext)
                removed.append(ext)
        for spare in self.ws.spares_stale(older_than_s=grace_s):  # left by a dead worker
            self.ws.spare_remove(spare)
        self.ws.trash_sweep(older_than_s=grace_s)  # left by a dead worker's remover
        if self.claims is not None:  # host users whose sandboxes, snapshots, checkouts are gone
            self.claims.sweep(older_than_s=grace_s)
        return removed
