"""gVisor (`runsc`): one OCI container per sandbox behind a user-space kernel, execs inside it.

Each Convoy installation keeps its own `runsc --root` under the data dir, so `runsc list` and
the reaper's process scan only ever see its own containers. The container's root is a
read-only skeleton; the host's /usr and a minimal /etc are bound read-only and the sandbox's
workspace read-write at /workspace. Limits come from the bundle (cgroups, as root); a timeout
kills every process the sandbox's commands started (`kill -9 -1` from inside, or the whole
container if even that cannot run). Memory checkpoints are `runsc checkpoint`, restored into
fresh containers over a copy-on-write layer of the workspace as it was at the checkpoint.

A container starts at a sandbox's first command, not at create: a caller's last command
(`exec(..., last=True)` before any other) runs as the container's own process under `runsc run`,
with no waiting init, no `runsc exec` and no `runsc delete` (the container ends with it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from django.conf import settings

from sandboxes.backends import cgroups
from sandboxes.backends.base import (
    FILES_DIR,
    Capability,
    ExecResult,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SnapshotHandle,
)
from sandboxes.backends.egress import (
    EGRESS_EXEC,
    EGRESS_INIT,
    EGRESS_WAIT,
    egress_binds,
    egress_wrapped,
)
from sandboxes.backends.images import gvisor_root, gvisor_system_mounts
from sandboxes.backends.local import (
    LocalBackend,
    processes_kill,
    seconds_since_boot,
    wait_exact,
)
from sandboxes.workspaces import SYSTEM_SYMLINKS, Meta

INIT = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600; done"]
RUNSC_TIMEOUT_S = 60
CHECKPOINT_PREFIX = "ck-"
ROOTFS_DIRS = ("usr", "etc", "workspace", "tmp", "proc", "dev", "sys", "root", "convoy/files")


# Host threads gVisor itself may need beyond the sandbox's own processes.
SENTRY_THREADS = 512


@functools.cache
def runsc_platforms() -> tuple[str, ...]:
    """The platforms the installed runsc offers, from its flag help ("ptrace (default), kvm");
    empty if that cannot be read (runsc then says what is wrong at the first start)."""
    try:
        out = subprocess.run(["runsc", "flags"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    help_text = out.stdout + out.stderr
    match = re.search(r"-platform string\s+specifies which platform to use: ([^.\n]+)", help_text)
    if not match:
        return ()
    return tuple(re.sub(r"\(.*?\)", "", p).strip() for p in match[1].split(","))


class GVisorBackend(LocalBackend):
    name = "gvisor"
    id_prefix = "gv"
    capabilities = (
        Capability.STREAMED_EXEC
        | Capability.SNAPSHOT
        | Capability.FORK
        | Capability.CHECKPOINT
        | Capability.READONLY_FILES
        | Capability.EGRESS_PROXY
        | Capability.IMAGES
    )
    isolation = (
        "gVisor user-space kernel: no network, host /usr read-only, own /workspace, "
        "memory/CPU/pids limits; runs the host's system directories"
    )

    def __init__(self, *args, platform: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not shutil.which("runsc"):
            raise SandboxError("runsc is not installed (Debian package runsc)")
        self.platform = platform or getattr(settings, "RUNSC_PLATFORM", "ptrace")
        known = runsc_platforms()
        if known and self.platform not in known:
            raise SandboxError(
                f"CONVOY_RUNSC_PLATFORM: the installed runsc has no platform {self.platform!r}; "
                f"it has {', '.join(known)}"
            )
        self.state_root = self.ws.root / "runsc"
        self._last_runs: dict[int, Path] = {}  # a last command's `runsc run`: its pid file
        self.checkpoints = self.ws.root / "checkpoints"
        self._deleting: list[subprocess.Popen] = []
        self._deleting_lock = threading.Lock()

    # --- runsc plumbing -------------------------------------------------------------------
    def _runsc(self, network: str = "none", *, egress: bool = False) -> list[str]:
        self.state_root.mkdir(parents=True, exist_ok=True)
        return [
            "runsc",
            f"--root={self.state_root}",
            f"--platform={self.platform}",
            f"--network={'host' if network == 'open' else 'none'}",
            # The relay connects to the proxy's host socket (mounted at /convoy/egress); the
            # sandbox may open host sockets, never create them.
            *(["--host-uds=open"] if egress else []),
        ]

    def _runsc_for(self, meta: Meta) -> list[str]:
        return self._runsc(meta.network, egress=bool(meta.extra.get("egress_dir")))

    def _run(self, meta: Meta, *args: str, timeout: float = RUNSC_TIMEOUT_S, check=True):
        # A detached container inherits stdout/stderr and keeps them open: point them at a file,
        # never at a pipe that we would wait on forever.
        argv = [*self._runsc_for(meta), *args]
        with tempfile.TemporaryFile("w+") as err:
            if args[0] in ("state", "list"):
                run = subprocess.run(
                    argv, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout
                )
            else:
                proc = subprocess.Popen(
                    argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
                )
                try:
                    returncode = wait_exact(proc, timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise
                run = subprocess.CompletedProcess(argv, returncode)
            err.seek(0)
            run.stderr = err.read()
        if check and run.returncode != 0:
            raise SandboxError(
                f"runsc {args[0]} failed: {run.stderr.strip()[-400:]}", transient=True
            )
        return run

    def _rootfs(self) -> Path:
        rootfs = self.ws.root / "rootfs"
        # Skeletons made before /convoy/files existed get it on their next use.
        if not (rootfs / ".ready").exists() or not (rootfs / "convoy" / "files").is_dir():
            for d in ROOTFS_DIRS:
                (rootfs / d).mkdir(parents=True, exist_ok=True)
            for name, target in SYSTEM_SYMLINKS.items():
                if os.path.lexists(f"/{name}") and not os.path.lexists(rootfs / name):
                    with contextlib.suppress(FileExistsError):  # another thread made it first
                        os.symlink(target, rootfs / name)
            (rootfs / ".ready").touch()
        return rootfs

    def _bundle(self, meta: Meta, command: dict | None = None) -> Path:
        """The container's bundle; its process is the waiting INIT, or `command` (args, env,
        cwd) for a last command run as the container itself."""
        base = self.ws.dir(meta.external_id)
        limits = meta.limits
        memory = int(limits["memory_mb"]) * 1024 * 1024
        fsize = int(limits["disk_mb"]) * 1024 * 1024
        config = {
            "ociVersion": "1.0.0",
            "process": {
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/sh", "-c", EGRESS_INIT] if meta.extra.get("egress_dir") else INIT,
                "env": ["PATH=/usr/bin:/bin"],
                "cwd": "/workspace",
                **(command or {}),
                "capabilities": {},
                "noNewPrivileges": True,
                "rlimits": [
                    {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096},
                    {"type": "RLIMIT_FSIZE", "hard": fsize, "soft": fsize},
                    {
                        "type": "RLIMIT_NPROC",
                        "hard": limits["pids_max"],
                        "soft": limits["pids_max"],
                    },
                ],
            },
            "root": gvisor_root(meta.extra, self._rootfs()),
            "hostname": "sandbox",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},  # noqa: S108
                {
                    "destination": "/workspace",
                    "type": "bind",
                    "source": str(base / "workspace"),
                    "options": ["rbind", "rw"],
                },
                # The host's /usr and /etc, or an image's /etc files; then the tools area.
                *gvisor_system_mounts(
                    meta.extra, etc=str(self.ws.etc()), workspace=str(base / "workspace")
                ),
                *self._files_mount(meta),
                *(
                    {
                        "destination": dest,
                        "type": "bind",
                        "source": src,
                        "options": ["rbind", "rw" if writable else "ro"],
                    }
                    for src, dest, writable in egress_binds(meta.extra)
                ),
            ],
            "linux": {
                # network "open" shares the host's stack: no network namespace of its own.
                "namespaces": [
                    {"type": t}
                    for t in ("pid", "network", "ipc", "uts", "mount")
                    if t != "network" or meta.network != "open"
                ],
                "resources": {
                    "memory": {"limit": memory, "swap": memory},
                    "cpu": {"quota": int(float(limits["cpu"]) * 100_000), "period": 100_000},
                    # The host cgroup counts gVisor's own threads (the sentry's Go runtime adds
                    # threads under heavy I/O), not the sandbox's processes: those are bounded
                    # inside gVisor by RLIMIT_NPROC above. Without headroom a busy sandbox's
                    # kernel dies on a refused clone.
                    "pids": {"limit": int(limits["pids_max"]) + SENTRY_THREADS},
                },
            },
        }
        # A last command's env may hold secrets: its bundle is private to its container and
        # removed once runsc has read it.
        bundle = base / ("bundle" if command is None else f"bundle-{meta.extra['container']}")
        bundle.mkdir(mode=0o700, exist_ok=True)
        path = bundle / "config.json"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        return bundle

    def _files_mount(self, meta: Meta) -> list[dict]:
        if not meta.extra.get("files"):
            return []
        source = self.files_path(meta.external_id)
        source.mkdir(exist_ok=True)  # a restore without files still mounts what was saved
        return [
            {
                "destination": FILES_DIR,
                "type": "bind",
                "source": str(source),
                "options": ["rbind", "ro"],
            }
        ]

    def _container(self, meta: Meta) -> str:
        """The sandbox's current container id (each restart makes a new one)."""
        return meta.extra.get("container", meta.external_id)

    def _alive(self, meta: Meta) -> bool:
        """Is the container's sandbox process still there? (Cheaper than `runsc state`.)"""
        try:
            pid = int((self.ws.dir(meta.external_id) / "container.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        return self._container(meta).encode() in cmdline

    # --- lifecycle ------------------------------------------------------------------------
    def _start(self, meta: Meta) -> None:
        """A restored sandbox starts now (its processes are in the image); any other starts at
        its first command (`_popen`), which a last command may become."""
        meta.extra.pop("container", None)
        if meta.extra.get("restore_image"):
            self._boot(meta)

    def _container_new(self, meta: Meta) -> str:
        # A fresh container id every start: a failed restore leaves its id unusable.
        container = f"{meta.external_id}-{os.urandom(3).hex()}"
        meta.extra["container"] = container
        return container

    def _pid_file(self, meta: Meta) -> str:
        return f"--pid-file={self.ws.dir(meta.external_id) / 'container.pid'}"

    def _boot(self, meta: Meta) -> None:
        """Start the container with its waiting init (or restore it from its image)."""
        container = self._container_new(meta)
        bundle = self._bundle(meta)
        image = meta.extra.pop("restore_image", None)
        if image:
            self._run(
                meta,
                "restore",
                "--detach",
                f"--image-path={image}",
                f"--bundle={bundle}",
                self._pid_file(meta),
                container,
            )
        else:
            self._run(
                meta, "run", "--detach", f"--bundle={bundle}", self._pid_file(meta), container
            )

    def _state_left(self, container: str) -> bool:
        """Does runsc still keep state for the container? (`runsc run` of a last command
        removes it when the command ends; a detached container keeps it until deleted.)"""
        return any(self.state_root.glob(f"{container}_*"))

    def _stop(self, meta: Meta) -> None:
        """Kill the container's processes now; `runsc delete` (≈1.5 s of polling) runs behind.

        Once its sandbox and gofer processes are dead nothing holds the workspace, and every
        start uses a fresh container id, so nothing needs to wait for the delete.
        """
        if "container" not in meta.extra and not self._state_left(meta.external_id):
            return  # never started
        container = self._container(meta)
        self._strays_kill({container})
        if not self._state_left(container):
            return  # a last command's `runsc run` ended and cleaned up after itself
        proc = subprocess.Popen(
            [*self._runsc_for(meta), "delete", "-force", container],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        with self._deleting_lock:
            self._deleting = [p for p in self._deleting if p.poll() is None]
            self._deleting.append(proc)
        threading.Thread(target=proc.wait, daemon=True).start()  # no zombies in long workers

    def wait_deletes(self, timeout: float = 30) -> None:
        """Wait for the background `runsc delete`s (tests and the reaper use this)."""
        with self._deleting_lock:
            pending, self._deleting = self._deleting, []
        for proc in pending:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _running(self, meta: Meta) -> None:
        """Make sure the container runs: first start, or a restart after it ended."""
        if not self._alive(meta):
            self._stop(meta)
            self._boot(meta)
            self.ws.meta_write(meta)

    def _spawn(self, meta: Meta, *args: str) -> subprocess.Popen:
        """A runsc command whose output is a sandbox command's: both pipes, its own session."""
        return subprocess.Popen(
            [*self._runsc_for(meta), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            start_new_session=True,
        )

    def _popen(
        self, meta: Meta, argv: Sequence[str], cwd: str, env: dict[str, str], *, last: bool = False
    ) -> tuple[subprocess.Popen, Callable[[], None]]:
        command = {"args": list(argv), "env": [f"{k}={v}" for k, v in env.items()], "cwd": cwd}
        egress = bool(meta.extra.get("egress_dir"))
        if last and "container" not in meta.extra:
            if egress:  # no init: the command starts its own relay
                command["args"] = egress_wrapped(EGRESS_EXEC, argv)
            return self._popen_container(meta, command)
        if egress:  # the init's relay: wait for it (just booted, or restarted after a kill)
            command["args"] = egress_wrapped(EGRESS_WAIT, argv)
        self._running(meta)
        base = self.ws.dir(meta.external_id)
        # The process spec goes through a private file so env values (secrets) stay out of argv.
        spec_path = base / f"exec-{os.getpid()}-{time.monotonic_ns()}.json"
        process = {
            "user": {"uid": 0, "gid": 0},
            **command,
            "capabilities": {},
            "noNewPrivileges": True,
        }
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(process, f)
        container = self._container(meta)
        proc = self._spawn(meta, "exec", f"--process={spec_path}", container)
        killed = []

        def kill() -> None:
            if killed:
                return
            killed.append(True)
            # Everything but the container's init; if even that can't run (a fork bomb holds
            # every pid), kill the whole container; the next exec starts a fresh one.
            done = self._run(
                meta, "exec", container, "/bin/kill", "-9", "-1", check=False, timeout=10
            )
            if done.returncode not in (0, 1):
                self._run(meta, "kill", "--all", container, "KILL", check=False, timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        def cleanup_after_start() -> None:
            with contextlib.suppress(FileNotFoundError):
                spec_path.unlink()

        # runsc reads the file at startup; remove it once the process has been created.
        threading_cleanup(proc, cleanup_after_start)
        return proc, kill

    def _popen_container(
        self, meta: Meta, command: dict
    ) -> tuple[subprocess.Popen, Callable[[], None]]:
        """A last command as the container's own process: `runsc run` (not detached) streams
        its output, exits with its status (128+n for a signal) and removes the container."""
        container = self._container_new(meta)
        self.ws.meta_write(meta)  # terminate and the reaper know the container before it runs
        bundle = self._bundle(meta, command)
        pid_path = self.ws.dir(meta.external_id) / "container.pid"
        pid_path.unlink(missing_ok=True)  # it appears again once runsc has made the container
        proc = self._spawn(meta, "run", f"--bundle={bundle}", self._pid_file(meta), container)
        killed = []

        def kill() -> None:
            if not killed:  # the whole container: its sandbox, gofer and this `runsc run`
                killed.append(True)
                self._strays_kill({container})
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        def cleanup_once_created() -> None:
            # runsc is done with the bundle once it writes the pid file, at the end of its
            # create (its state file comes earlier, before the sandbox process reads the spec).
            deadline = time.monotonic() + RUNSC_TIMEOUT_S
            while proc.poll() is None and not pid_path.exists():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            shutil.rmtree(bundle, ignore_errors=True)

        threading.Thread(target=cleanup_once_created, daemon=True).start()
        if len(self._last_runs) > 256:  # results never read (the caller stopped listening)
            self._last_runs.clear()
        self._last_runs[proc.pid] = pid_path
        return proc, kill

    def _limit_counters(self, meta: Meta) -> dict[str, int]:
        """The host cgroups runsc made for the container: they see the memory limit's OOM kills
        (the process limit is gVisor's own RLIMIT_NPROC, known only by its fork errors). A
        last command's container, and its cgroups, are gone when it ends."""
        container = meta.extra.get("container")
        return cgroups.limit_counters(cgroups.engine_cgroups(container)) if container else {}

    def _engine_failed(self, proc: subprocess.Popen, result: ExecResult) -> str:
        """A last command's `runsc run` that ended before runsc wrote the container's pid file
        (the end of its create) never ran the command: runsc itself failed."""
        pid_path = self._last_runs.pop(proc.pid, None)
        if pid_path is None or result.exit_code == 0 or result.timed_out or pid_path.exists():
            return ""
        return f"runsc could not start the container (runsc run exited {result.exit_code})"

    # --- snapshots: the container must be restarted onto the new layer ---------------------
    def snapshot(self, handle: SandboxHandle) -> SnapshotHandle:
        meta = self.ws.meta_read(handle.external_id)
        self._stop(meta)
        layer = self.ws.snapshot(meta)
        self._start(meta)  # the next command starts the container again, over the new layer
        self.ws.meta_write(meta)
        return SnapshotHandle(self.name, layer)

    # --- memory checkpoints -----------------------------------------------------------------
    def checkpoint(self, handle: SandboxHandle) -> SnapshotHandle:
        """Save the sandbox's memory and freeze its files; the sandbox goes on running."""
        meta = self.ws.meta_read(handle.external_id)
        image = self.checkpoints / f"{CHECKPOINT_PREFIX}{os.urandom(6).hex()}"
        image.mkdir(parents=True)
        self._running(meta)
        container = self._container(meta)
        started = time.monotonic()
        self._run(meta, "checkpoint", f"--image-path={image}", container)
        self.last_checkpoint_s = time.monotonic() - started
        # The container has stopped; its files become a layer and it restarts above it.
        self._stop(meta)
        layer = self.ws.snapshot(meta)
        saved = {"layer": layer, "limits": meta.limits, "files": bool(meta.extra.get("files"))}
        (image / "convoy.json").write_text(json.dumps(saved))
        self._start(meta)
        self.ws.meta_write(meta)
        return SnapshotHandle(self.name, image.name)

    def restore(self, checkpoint: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        """A new sandbox running the checkpointed processes, over the checkpoint's files."""
        image = self.checkpoints / checkpoint.external_id
        try:
            info = json.loads((image / "convoy.json").read_text())
        except FileNotFoundError:
            raise SandboxError(f"no checkpoint {checkpoint.external_id}") from None
        # The restored kernel expects the limits it was saved with.
        spec = SandboxSpec(
            **{
                **spec.__dict__,
                "memory_mb": info["limits"]["memory_mb"],
                "cpu": info["limits"]["cpu"],
                "pids_max": info["limits"]["pids_max"],
            }
        )
        layers = self.ws.snapshot_layers(info["layer"])
        # The saved kernel expects every mount it had: an empty /convoy/files if need be.
        extra = {"restore_image": str(image), "files": bool(info.get("files"))}
        return self._make(spec, layers, extra=extra)

    def delete_checkpoint(self, checkpoint: SnapshotHandle) -> None:
        shutil.rmtree(self.checkpoints / checkpoint.external_id, ignore_errors=True)

    def fork(self, snapshot: SnapshotHandle, spec: SandboxSpec, count: int) -> list[SandboxHandle]:
        """N sandboxes from a filesystem snapshot, or N running copies of a memory checkpoint."""
        if not snapshot.external_id.startswith(CHECKPOINT_PREFIX):
            return super().fork(snapshot, spec, count)
        made: list[SandboxHandle] = []
        try:
            for _ in range(count):
                made.append(self.restore(snapshot, spec))
        except BaseException:
            for handle in made:
                self.terminate(handle)
            raise
        return made

    def delete_snapshot(self, snapshot: SnapshotHandle) -> None:
        if snapshot.external_id.startswith(CHECKPOINT_PREFIX):
            info = self.checkpoints / snapshot.external_id / "convoy.json"
            layer = None
            with contextlib.suppress(FileNotFoundError, ValueError):
                layer = json.loads(info.read_text())["layer"]
            if layer:  # refused (SandboxError) while a sandbox still stands on the files
                super().delete_snapshot(SnapshotHandle(self.name, layer))
            self.delete_checkpoint(snapshot)
            return
        super().delete_snapshot(snapshot)

    # --- reaping ----------------------------------------------------------------------------
    def _strays_kill(
        self, containers: set[str] | None = None, *, started_before: float | None = None
    ) -> list[int]:
        """Kill runsc processes under our --root whose container is `containers` (or any),
        and that started before `started_before` (seconds since boot) when given."""
        return processes_kill(
            all_of=[f"--root={self.state_root}"], any_of=containers, started_before=started_before
        )

    def sweep(
        self, live: set[str], *, grace_s: float = 120, before: Callable[[str], None] | None = None
    ) -> list[str]:
        removed = super().sweep(live, grace_s=grace_s, before=before)
        self.wait_deletes()
        # Containers (and their `runsc-sandbox boot` processes) that no live workspace owns.
        # Listed before the workspaces: a sandbox's workspace is made before its container,
        # so a container another worker starts meanwhile has its workspace listed below.
        since = seconds_since_boot()
        listed = subprocess.run(
            [*self._runsc(), "list", "--quiet"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        owned = set()
        for ext in self.ws.ids():
            with contextlib.suppress(SandboxError, ValueError, TypeError):
                owned.add(self._container(self.ws.meta_read(ext)))
        for container in set(listed) - owned:
            if before is not None:
                before(container)
            subprocess.run(
                [*self._runsc(), "delete", "-force", container], capture_output=True, timeout=30
            )
            removed.append(container)
        if not owned:  # nothing of ours is live: any runsc process under our root is a stray,
            # unless it started since the sweep did (another worker's sandbox, just begun)
            self._strays_kill(started_before=since)
        return removed


def threading_cleanup(proc: subprocess.Popen, cleanup: Callable[[], None]) -> None:
    """Run `cleanup` once `proc` has had time to read its process file (or has exited)."""

    def wait() -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        cleanup()

    threading.Thread(target=wait, daemon=True).start()
