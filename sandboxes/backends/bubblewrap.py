"""bubblewrap: each exec is a fresh `bwrap` with no network, no host view and a cgroup's limits.

The sandbox itself is its workspace directory and its cgroup; nothing runs between commands.
The command's environment is exactly the one the caller gives (never the app's). bwrap itself,
a host process running as the worker's user, is started by its absolute path with a fixed
host environment (`HOST_ENV`): the command's variables (`PATH`, `LD_PRELOAD`, anything a spec
or an image names) would otherwise choose the program the worker runs and what the host's
loader puts into it. They reach the command as bwrap's `--clearenv` and `--setenv` options
read from a memory file (`--args`), so secrets stay out of argv, where other host processes
could read them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from django.conf import settings

from sandboxes.backends import cgroups, seccomp
from sandboxes.backends.base import FILES_DIR, Capability, SandboxError
from sandboxes.backends.egress import EGRESS_EXEC, egress_binds, egress_wrapped
from sandboxes.backends.host_user import (
    UidClaims,
    private_to,
    sandbox_host_ids,
    search_grant,
)
from sandboxes.backends.images import HOME_DIR, bwrap_image_args, tools_home_fd
from sandboxes.backends.local import (
    LocalBackend,
    processes_kill,
    rlimits_apply,
    rlimits_for,
)
from sandboxes.workspaces import SYSTEM_SYMLINKS, Meta, meta_owner

log = logging.getLogger(__name__)

SANDBOX_UID = 1000  # inside the user namespace; maps to the uid bwrap runs as (`host_user`)
# What bwrap (a host process) runs with, whatever the command's environment says. The C
# locale is built into the C library: with C.UTF-8, setpriv, prlimit and bwrap each read about
# a dozen locale files at every command (0.24 ms of CPU a command). The command's own locale
# comes from its environment (`--args`), not from this.
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def env_args_fd(env: Mapping[str, str]) -> int:
    """A memory file holding `--clearenv` and a `--setenv NAME VALUE` per variable,
    NUL-separated, for bwrap's `--args FD`; the caller closes it."""
    parts = ["--clearenv"]
    for name, value in env.items():
        parts += ["--setenv", name, value]
    data = b"".join(part.encode("utf-8", "surrogateescape") + b"\0" for part in parts)
    fd = os.memfd_create("convoy-env", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)  # memfd writes are whole (no pipe buffer to fill)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


# Parts of /proc that act on the whole host, made read-only (and the few that only tell about
# it hidden). The kernel lets a process whose user id is root outside write /proc/sys by its
# user id alone, capabilities aside, and the worker runs as root: a command could set
# `kernel.core_pattern` to a program of its workspace, which the kernel then runs as root on
# the host at the next crash. bubblewrap's own cover skips /proc/sys (it asks whether the
# directory is writable, and it is not: its files are). As container engines do.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
PROC_HIDDEN = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "cmdline")


@functools.cache  # the host's /proc has the same entries for the process's life
def proc_args() -> tuple[str, ...]:
    """`--proc /proc` with PROC_READ_ONLY bound read-only and PROC_HIDDEN covered."""
    argv = ["--proc", "/proc"]
    for name in PROC_READ_ONLY:
        argv += ["--ro-bind-try", f"/proc/{name}", f"/proc/{name}"]
    for name in PROC_HIDDEN:
        if os.path.exists(f"/proc/{name}"):
            argv += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    return tuple(argv)


def bwrap_argv(
    *,
    etc: str,
    workspace: str,
    network: str,
    cwd: str,
    tmp_mb: int = 2048,
    files: str | None = None,
    egress: dict | None = None,
    image: dict | None = None,
    home_fd: int | None = None,
) -> list[str]:
    """`image`: the sandbox's meta.extra, for its campaign image. `home_fd`: the tools area,
    a descriptor from `images.tools_home_fd` (never its path: a command may have put a symlink
    there, which bwrap would follow on the host), passed to bwrap with it."""
    root = bwrap_image_args(image or {}, etc=etc)
    argv = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--unshare-user",
        # No user namespaces inside: a nested one would hand the command every capability
        # over its own namespaces, the usual first step of a kernel exploit.
        "--disable-userns",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
    ]
    if root is not None:  # the image as `/`, read-only, instead of the host's /usr
        argv += root
    else:
        argv += ["--ro-bind", "/usr", "/usr"]
        for name, target in SYSTEM_SYMLINKS.items():
            if os.path.lexists(f"/{name}"):
                argv += ["--symlink", target, f"/{name}"]
        argv += ["--ro-bind", etc, "/etc"]
    argv += ["--bind", workspace, "/workspace"]
    if home_fd is not None:
        argv += ["--bind-fd", str(home_fd), HOME_DIR]
    if files:
        argv += ["--ro-bind", files, FILES_DIR]
    # The network stays unshared with egress: the relay's socket is the only way out.
    for source, target, writable in egress_binds(egress or {}):
        argv += ["--bind" if writable else "--ro-bind", source, target]
    argv += ["--size", str(tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]  # noqa: S108 (its own)
    argv += [*proc_args(), "--dev", "/dev"]
    if network == "open":
        argv += ["--share-net", "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    argv += ["--chdir", cwd, "--"]
    return argv


# What bwrap binds over an image's directories (bwrap looks each one up as the host user).
IMAGE_MOUNT_POINTS = ("convoy/home", "convoy/files", "convoy/egress", "convoy/bin", "workspace")
# prlimit's option for each limit `rlimits_for` sets.
PRLIMIT_OPTIONS = {
    resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_CORE: "--core",
    resource.RLIMIT_NOFILE: "--nofile",
    resource.RLIMIT_CPU: "--cpu",
    resource.RLIMIT_AS: "--as",
}


def prlimit_argv(limits: dict, *, address_space: bool) -> list[str]:
    """`prlimit` setting a sandbox's rlimits on bwrap before it starts, for a bwrap started as
    the sandboxes' host user (`host_user`): the worker may not set them on that user's
    processes afterwards (that takes CAP_SYS_RESOURCE, which container runtimes drop).

    RLIMIT_NPROC is left out: it counts every process of a real user id, and set on bwrap it
    would count every sandbox's processes against each one's limit. The sandbox's cgroup holds
    its processes (`pids_max`); where the worker could set it on the sandbox's first process
    (root's own sandboxes), the kernel counted it per user namespace, and root's were exempt."""
    found = [
        f"{PRLIMIT_OPTIONS[which]}={value}"
        for which, value in rlimits_for(limits, address_space=address_space)
        if which in PRLIMIT_OPTIONS
    ]
    return [_prlimit(), *found, "--"]


@functools.cache  # found once, on the worker's own PATH (every command starts it)
def _prlimit() -> str:
    return shutil.which("prlimit") or "prlimit"


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


def _cgroup_limits(limits: dict) -> dict:
    return {
        "memory_bytes": int(limits["memory_mb"]) * 1024 * 1024,
        "pids_max": int(limits["pids_max"]),
        "cpu": float(limits["cpu"]),
    }


class BubblewrapBackend(LocalBackend):
    name = "bwrap"
    id_prefix = "bw"
    capabilities = (
        LocalBackend.capabilities
        | Capability.READONLY_FILES
        | Capability.EGRESS_PROXY
        | Capability.IMAGES
    )
    isolation = (
        "bubblewrap namespaces: no network, host /usr read-only, own /workspace, "
        "cgroup limits; runs the host's system directories"
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        found = shutil.which("bwrap")  # the worker's own PATH, never a command's
        if not found:
            raise SandboxError("bwrap is not installed (Debian package bubblewrap)")
        self.bwrap = os.path.realpath(found)
        self.setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"  # util-linux, as prlimit
        seccomp.filter_program()  # compiled once per process; says now if libseccomp is missing
        self._made_here: set[str] = set()  # sandboxes this (live) process created
        # A root worker starts bwrap as an unprivileged host user, one per run (`host_user`):
        # the sandbox's user was root outside. bwrap looks its bind sources up as that user,
        # so the passage group every sandbox has may pass through (not list) the data
        # directory and the sandboxes' root.
        self.host_ids = sandbox_host_ids()
        # From the installation's data directory down (a test's backend has its own inside);
        # a test run's (var/test-<pid>) from Convoy's own var/ down, which a development
        # installation keeps private too.
        top = Path(settings.DATA_DIR)
        own = Path(settings.BASE_DIR) / "var"
        top = own if top.parent == own else top
        self._private_top = top if self.data_dir.is_relative_to(top) else self.data_dir
        if self.host_ids is not None:
            self.ws.root_make()
            search_grant(self.ws.root, upto=self._private_top, gid=self.host_ids.group)
            self.claims = UidClaims(self.ws.root / ".uids", self.host_ids)
            if self.ws.layers_dir.is_dir():  # made 0755 before per-run users
                self.ws.layers_dir.chmod(0o700)

    def _start(self, meta: Meta) -> None:
        """The sandbox's cgroups: a spare this process kept from a terminated sandbox (renamed,
        limits rewritten where they differ), else new ones."""
        if len(self._made_here) > 1024:  # sandboxes terminated by another process
            self._made_here = {n for n in self._made_here if self.ws.dir(n).exists()}
        self._made_here.add(meta.external_id)
        self._binds_reachable(meta)
        limits = _cgroup_limits(meta.limits)
        claimed = cgroups.cgroup_claim(meta.external_id, owner=self.install, **limits)
        if claimed is None:
            claimed = cgroups.cgroup_create(meta.external_id, owner=self.install, **limits)
        meta.cgroups = claimed

    def _binds_reachable(self, meta: Meta) -> None:
        """What bwrap binds from the data directory (the egress proxy's socket directory and
        relay, an image) reachable by the sandbox's host user: shared read-only things through
        the passage group; the proxy's socket directory and socket (the proxy makes them the
        worker's alone) by the sandbox's own group only."""
        owner = meta_owner(meta)
        if self.host_ids is None or owner is None:
            return
        group = self.host_ids.group
        extra = meta.extra
        egress_dir = extra.get("egress_dir")
        for path in (
            os.path.dirname(egress_dir) if egress_dir else None,
            extra.get("egress_relay"),
            extra.get("image_root"),
        ):
            if not path:
                continue
            for top in (Path(settings.DATA_DIR), self._private_top):
                if Path(path).is_relative_to(top):
                    directory = path if os.path.isdir(path) else os.path.dirname(path)
                    search_grant(directory, upto=top, gid=group)
                    break
        if egress_dir:  # the proxy's own (`egress_extra` checked it holds its socket)
            socket = os.path.join(egress_dir, "proxy.sock")
            os.chown(socket, -1, owner[1], follow_symlinks=False)
            os.chmod(socket, 0o660)
            private_to(egress_dir, owner[1])
        if extra.get("image_root"):  # its mount points (built as root: /convoy may be 0700)
            root = os.path.realpath(extra["image_root"])
            for inside in IMAGE_MOUNT_POINTS:
                where = os.path.join(root, inside)
                # Never through a link the image holds (it may name any host directory).
                if os.path.isdir(where) and os.path.realpath(where) == where:
                    search_grant(where, upto=root, gid=group)

    def _owner_changed(self, meta: Meta) -> None:
        self._binds_reachable(meta)

    def _stop(self, meta: Meta) -> None:
        if meta.external_id in self._made_here:
            # Its commands' bwraps ran here, and ended; `_cgroups_release`, which always comes
            # next, kills whatever is left in its cgroups (under the launch lock, to recycle).
            return
        cgroups.cgroup_kill(meta.cgroups)
        # A worker killed while bwrap was starting leaves bwrap's sandbox-side process
        # waiting forever for its dead parent. Where it was not born in the cgroups (cgroup
        # v2) it never reached them: it is found by the workspace it binds (a /proc scan, so
        # only for sandboxes made elsewhere: the reaper's, a resumed run's, a cancel's).
        processes_kill(all_of=["bwrap", str(self.ws.workspace(meta.external_id))])

    def _cgroups_release(self, meta: Meta) -> None:
        """Kept, emptied, for this process's next sandbox (see `cgroups.cgroup_recycle`) when
        this process made the sandbox; removed when another did (one of its commands may be
        starting in them right now)."""
        if meta.external_id not in self._made_here:
            cgroups.cgroup_remove(meta.cgroups)
            return
        self._made_here.discard(meta.external_id)
        cgroups.cgroup_recycle(meta.cgroups, owner=self.install, limits=_cgroup_limits(meta.limits))

    def _popen(
        self, meta: Meta, argv: Sequence[str], cwd: str, env: dict[str, str], *, last: bool = False
    ) -> tuple[subprocess.Popen, Callable[[], None]]:
        # Every command is its own bwrap (its namespaces end with it): `last` changes nothing.
        workspace = str(self.ws.workspace(meta.external_id))
        home_fd = (
            tools_home_fd(workspace, owner=meta_owner(meta))
            if meta.extra.get("tools_home")
            else None
        )
        try:
            full = bwrap_argv(
                etc=str(self.ws.etc()),
                workspace=workspace,
                network=meta.network,
                cwd=cwd,
                tmp_mb=int(meta.limits.get("disk_mb", 2048)),
                files=str(self.files_path(meta.external_id)) if meta.extra.get("files") else None,
                egress=meta.extra if meta.extra.get("egress_dir") else None,
                image=meta.extra,
                home_fd=home_fd,
            )
            return self._popen_bwrap(meta, full, argv, env, home_fd)
        finally:
            if home_fd is not None:
                os.close(home_fd)

    def _popen_bwrap(
        self, meta: Meta, full: list[str], argv: Sequence[str], env: dict[str, str], home_fd
    ) -> tuple[subprocess.Popen, Callable[[], None]]:
        if meta.extra.get("egress_dir"):  # this command's own relay, started before it
            argv = egress_wrapped(EGRESS_EXEC, argv)
        popen = {
            "executable": self.bwrap,
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "env": HOST_ENV,
            "start_new_session": True,
        }
        env_fd = env_args_fd(env)
        try:
            full = [full[0], "--args", str(env_fd), *full[1:]]
            owner = meta_owner(meta)
            child_limits = owner is None
            if not child_limits:
                # setpriv takes the host user, then prlimit sets the limits, then bwrap runs:
                # Popen's own `user=`/`group=` would do the switch but keep CPython from using
                # vfork, and forking the worker cost about 10 ms of CPU a command more than
                # these two small programs. prlimit execs `bwrap` found on HOST_ENV's PATH
                # (kept as argv[0]: the engine's process scans look for it), never on the
                # command's.
                uid, gid = owner
                # The passage group (`host_user`) as its only supplementary group.
                group = self.host_ids.group
                groups = "--clear-groups" if gid == group else f"--groups={group}"
                setpriv = [self.setpriv, f"--reuid={uid}", f"--regid={gid}", groups]
                limits = prlimit_argv(meta.limits, address_space=not meta.cgroups)
                full = [*setpriv, "--", *limits, *full]
                popen["executable"] = full[0]
            proc = self._popen_handshake(
                meta, full, argv, popen, keep=(home_fd, env_fd), child_limits=child_limits
            )
        finally:
            os.close(env_fd)

        def kill() -> None:
            # bwrap's pid namespace dies with its init, which dies with bwrap (--die-with-parent):
            # killing the group takes every descendant, SIGTERM-ignoring or not.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        return proc, kill

    @staticmethod
    def _popen_handshake(
        meta: Meta,
        full: list[str],
        argv,
        popen: dict,
        keep: tuple = (),
        *,
        child_limits: bool = True,
    ) -> subprocess.Popen:
        """bwrap reports its sandbox's first process on --info-fd, then, once its namespaces
        and mounts are ready, waits on --block-fd before running the command: that process
        gets its rlimits (and its cgroups, where it was not born in them) in the gap, so
        everything the command starts inherits them (and no slow preexec_fn is needed).

        On cgroup v1, bwrap is spawned by a thread that sits in the sandbox's cgroups
        (`cgroups.spawn_inside`): bwrap and all it starts are born there, and nothing waits for
        the host-wide cgroup lock. On a cgroup v2 host the sandbox's first process is moved in
        by pid once bwrap reports it (after a quiet spell that move waits for an RCU grace
        period unless the host mounts cgroup2 with `favordynmods`: `make host-tune`).

        `keep`: more descriptors for bwrap (None for none), the caller's to close.
        `child_limits`: False where `full` sets the rlimits itself (`prlimit_argv`)."""
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        filter_r = seccomp.filter_fd()
        fds = ["--info-fd", str(info_w), "--block-fd", str(block_r), "--seccomp", str(filter_r)]

        def abandon() -> None:  # bwrap's ends: once it has them, or will never run
            os.close(info_w)
            os.close(block_r)
            os.close(filter_r)

        def spawn() -> subprocess.Popen:
            try:
                return subprocess.Popen(
                    [*full[:-1], *fds, "--", *argv],
                    pass_fds=(info_w, block_r, filter_r, *(fd for fd in keep if fd is not None)),
                    **popen,
                )
            finally:
                abandon()

        proc: subprocess.Popen | None = None
        try:
            launched = cgroups.spawn_inside(meta.cgroups, spawn, abandon)
        except BaseException:
            abandon()
            os.close(info_r)
            os.close(block_w)
            raise
        try:
            if launched is None:
                proc = spawn()
            child = _child_pid(info_r)  # 0: bwrap failed first, and says why on stderr
            if child:  # every process the command starts descends from this one
                if launched is None:
                    cgroups.cgroup_enter(meta.cgroups, child)
                if child_limits:
                    rlimits_apply(meta.limits, address_space=not meta.cgroups, pid=child)
            with contextlib.suppress(BrokenPipeError):
                os.write(block_w, b"go")
            if launched is not None:
                proc = launched.result()
        except BaseException:
            if proc is None and launched is not None:
                with contextlib.suppress(Exception):
                    proc = launched.result()
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            os.close(info_r)
            os.close(block_w)
        return proc
