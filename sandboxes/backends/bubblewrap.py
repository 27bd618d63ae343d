"""bubblewrap: each exec is a fresh `bwrap` with no network, no host view and a cgroup's limits.

The sandbox itself is its workspace directory and its cgroup; nothing runs between commands.
The command's environment is exactly the one handed to `bwrap` (never the app's), passed
through the process environment rather than `--setenv` so secrets stay out of argv, where
other host processes could read them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from sandboxes.backends import cgroups
from sandboxes.backends.base import FILES_DIR, Capability, SandboxError
from sandboxes.backends.local import LocalBackend, processes_kill, rlimits_apply
from sandboxes.workspaces import SYSTEM_SYMLINKS, Meta

log = logging.getLogger(__name__)

SANDBOX_UID = 1000  # inside the user namespace; maps to the worker's own uid outside


def bwrap_argv(
    *,
    etc: str,
    workspace: str,
    network: str,
    cwd: str,
    tmp_mb: int = 2048,
    files: str | None = None,
) -> list[str]:
    argv = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--unshare-user",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name, target in SYSTEM_SYMLINKS.items():
        if os.path.lexists(f"/{name}"):
            argv += ["--symlink", target, f"/{name}"]
    argv += ["--ro-bind", etc, "/etc", "--bind", workspace, "/workspace"]
    if files:
        argv += ["--ro-bind", files, FILES_DIR]
    argv += ["--size", str(tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]  # noqa: S108 (its own)
    argv += ["--proc", "/proc", "--dev", "/dev"]
    if network == "open":
        argv += ["--share-net", "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    argv += ["--chdir", cwd, "--"]
    return argv


def _child_pid(fd: int) -> int:
    """The sandbox's first process, from bwrap's --info-fd JSON (0 if bwrap failed first)."""
    data = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        with contextlib.suppress(ValueError):
            return int(json.loads(data)["child-pid"])
    return 0


_maker: dict[int, ThreadPoolExecutor] = {}  # by process: a forked worker makes its own


def _cgroup_maker() -> ThreadPoolExecutor:
    pid = os.getpid()
    if pid not in _maker:
        _maker.clear()
        _maker[pid] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="convoy-cgroups")
    return _maker[pid]


def _cgroups_make(name: str, **limits) -> list[str]:
    made = cgroups.cgroup_create(name, **limits)
    # The cgroup move of the sandbox's first command waits out a grace period after a quiet
    # spell: start it now, while that command's bwrap starts. (Not before the mkdirs above:
    # the wait holds the lock they need.)
    cgroups.attach_warm()
    return made


class BubblewrapBackend(LocalBackend):
    name = "bwrap"
    id_prefix = "bw"
    capabilities = LocalBackend.capabilities | Capability.READONLY_FILES
    isolation = (
        "bubblewrap namespaces: no network, host /usr read-only, own /workspace, "
        "cgroup limits; runs the host's system directories"
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not shutil.which("bwrap"):
            raise SandboxError("bwrap is not installed (Debian package bubblewrap)")
        self._making: dict[str, Future] = {}  # cgroups being made, by sandbox, until first used
        self._made_here: set[str] = set()  # sandboxes this (live) process created

    def _start(self, meta: Meta) -> None:
        """The sandbox's cgroups are made in the background: its first command waits for them
        only once bwrap is running, so making them overlaps bwrap's own start."""
        limits = meta.limits
        meta.cgroups = cgroups.cgroup_paths(meta.external_id, owner=self.install)
        if len(self._making) > 256:  # sandboxes terminated by another process, never used here
            for name in [n for n, future in list(self._making.items()) if future.done()]:
                self._making.pop(name, None)
        if len(self._made_here) > 1024:  # likewise
            self._made_here = {n for n in self._made_here if self.ws.dir(n).exists()}
        self._made_here.add(meta.external_id)
        self._making[meta.external_id] = _cgroup_maker().submit(
            _cgroups_make,
            meta.external_id,
            memory_bytes=int(limits["memory_mb"]) * 1024 * 1024,
            pids_max=int(limits["pids_max"]),
            cpu=float(limits["cpu"]),
            owner=self.install,
        )

    def _cgroups_ready(self, meta: Meta, future: Future | None) -> None:
        """Wait for the cgroups made since create; none made (cgroups unavailable): say so."""
        if future is None:
            return
        try:
            made = future.result()
        except Exception:
            log.exception("making the cgroups of sandbox %s failed", meta.external_id)
            made = []
        if made != meta.cgroups:
            meta.cgroups = made
            self.ws.meta_write(meta)

    def _stop(self, meta: Meta) -> None:
        self._cgroups_ready(meta, self._making.pop(meta.external_id, None))
        cgroups.cgroup_kill(meta.cgroups)
        if meta.external_id in self._made_here:  # its commands' bwraps ran here, and ended
            self._made_here.discard(meta.external_id)
            return
        # A worker killed while bwrap was starting leaves bwrap's sandbox-side process
        # waiting forever for its dead parent, before it ever reached the cgroups: it is
        # found by the workspace it binds (a /proc scan, so only for sandboxes made elsewhere:
        # the reaper's, a resumed run's, a cancel's).
        processes_kill(all_of=["bwrap", str(self.ws.workspace(meta.external_id))])

    def _popen(
        self, meta: Meta, argv: Sequence[str], cwd: str, env: dict[str, str], *, last: bool = False
    ) -> tuple[subprocess.Popen, Callable[[], None]]:
        # Every command is its own bwrap (its namespaces end with it): `last` changes nothing.
        making = self._making.pop(meta.external_id, None)
        if making is None:  # else the maker starts it, after its mkdirs (see attach_warm)
            cgroups.attach_warm()
        full = bwrap_argv(
            etc=str(self.ws.etc()),
            workspace=str(self.ws.workspace(meta.external_id)),
            network=meta.network,
            cwd=cwd,
            tmp_mb=int(meta.limits.get("disk_mb", 2048)),
            files=str(self.files_path(meta.external_id)) if meta.extra.get("files") else None,
        )
        popen = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "env": env,
            "start_new_session": True,
        }
        proc = self._popen_handshake(
            meta, full, argv, popen, lambda: self._cgroups_ready(meta, making)
        )

        def kill() -> None:
            # bwrap's pid namespace dies with its init, which dies with bwrap (--die-with-parent):
            # killing the group takes every descendant, SIGTERM-ignoring or not.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        return proc, kill

    @staticmethod
    def _popen_handshake(
        meta: Meta, full: list[str], argv, popen: dict, cgroups_ready: Callable[[], None]
    ) -> subprocess.Popen:
        """bwrap reports its sandbox's first process on --info-fd, then waits on --block-fd
        before running the command: that process gets its cgroup and rlimits in the gap, so
        everything the command starts inherits them (and no slow preexec_fn is needed).

        bwrap itself (outside the sandbox's namespaces, it only waits for that process) stays
        where the worker is. The move would wait for an RCU grace period after a quiet spell;
        `cgroups.attach_warm` keeps that lock ready while sandboxes are being started."""
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        fds = ["--info-fd", str(info_w), "--block-fd", str(block_r)]
        try:
            proc = subprocess.Popen(
                [*full[:-1], *fds, "--", *argv], pass_fds=(info_w, block_r), **popen
            )
        finally:
            os.close(info_w)
            os.close(block_r)
        try:
            child = _child_pid(info_r)  # 0: bwrap failed first, and says why on stderr
            cgroups_ready()
            if child:  # every process the command starts descends from this one
                cgroups.cgroup_enter(meta.cgroups, child)
                rlimits_apply(meta.limits, address_space=not meta.cgroups, pid=child)
            with contextlib.suppress(BrokenPipeError):
                os.write(block_w, b"go")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            os.close(info_r)
            os.close(block_w)
        return proc
