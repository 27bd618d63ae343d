"""Building one image's root filesystem on disk: the base, then the pip, npm and run steps.

Layout under `<data dir>/images/`:
    <key>/rootfs          the finished root filesystem (backends mount it read-only)
    <key>/manifest.json   written inside the build directory last, before the rename: a
                          directory without it is not an image
    logs/<key>.log        the latest build's output
    .building-<key>-<token>/   a build in progress; renamed to <key> when complete
No database here: `sandboxes.images.services` decides who builds and records the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from sandboxes.backends import cgroups, seccomp
from sandboxes.backends.bubblewrap import HOST_ENV, env_args_fd, proc_args
from sandboxes.backends.images import MOUNTPOINT_DIRS, MOUNTPOINT_FILES, mountpoint_fault
from sandboxes.backends.local import WALK_SHARE_MAX, WATCH_EVERY_S, free_bytes
from sandboxes.backends.local import disk_usage as tree_usage
from sandboxes.egress.packages import CA_VARIABLES, apt_uris_read
from sandboxes.images.hostconfig import host_architecture, package_client_config
from sandboxes.images.network import BuildNetwork, NetworkAttachment
from sandboxes.images.oci import OciError, oci_pull, oci_tool_env
from sandboxes.images.spec import ImageSpec, field_for_package

VENV = "/opt/convoy-venv"
NPM_PREFIX = "/opt/convoy-npm"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_PATH = f"{VENV}/bin:{NPM_PREFIX}/bin:{SYSTEM_PATH}"
# The build's $HOME, on its own tmpfs /tmp: pip and npm caches never reach the image.
BUILD_HOME = "/tmp/convoy-build-home"  # noqa: S108
# What the installation's minimal /etc gives a host-/usr sandbox, written into the image at the
# end of its build (not bound at each start: every mount costs start time, gVisor's most).
# The image's own files the builder reads (dpkg's status file of a large image is a few MB).
FILE_READ_MAX = 64 * 1024 * 1024
# A build command (umoci, mmdebstrap, a pip, npm or run step) still running after this
# is stopped and fails the build: a step waiting forever would hold the image's build claim.
COMMAND_TIMEOUT_S = 3600.0
# mmdebstrap (root mode) bind-mounts the host's /dev/shm, and rbinds /proc and /sys, into the
# root filesystem while packages install, and takes them down at its end. Killed before (the
# build's timeout or disk limit kills its process group) it left them mounted on the host,
# where the build's removal of its directory deleted the host's /dev/shm files, PostgreSQL's
# shared memory among them; and the packages' scripts, run as root, saw that /dev/shm. It runs
# in a mount namespace of its own with a /dev/shm of its own: its mounts go with its last
# process, and no package sees the host's shared memory.
MMDEBSTRAP_NAMESPACE = [
    "unshare", "--mount", "--propagation", "private", "--",
    "sh", "-c", 'mount -t tmpfs -o mode=1777,nosuid,nodev convoy-shm /dev/shm && exec "$@"',
    "mmdebstrap-namespace",
]  # fmt: skip

SANDBOX_USER = "sandbox:x:1000:1000:sandbox:/convoy/home:/bin/sh"
SANDBOX_GROUP = "sandbox:x:1000:"
SANDBOX_HOSTS = "127.0.0.1 localhost sandbox\n::1 localhost\n"
SANDBOX_GITCONFIG = "[safe]\n\tdirectory = *\n[init]\n\tdefaultBranch = main\n"
# A test seam: called with each step's name ("base", "pip", "npm", "run[0]", "finish") before
# it runs. Tests set it to raise, to show a build that dies half way leaves no image.
STEP_HOOK: Callable[[str], None] | None = None

_APT_MISSING = (
    re.compile(r"E: Unable to locate package (?P<name>\S+)"),
    re.compile(r"E: Package '(?P<name>[^']+)' has no installation candidate"),
    re.compile(r"E: Version '[^']+' for '(?P<name>[^']+)' was not found"),
)
_PIP_MISSING = re.compile(r"No matching distribution found for (?P<name>[A-Za-z0-9._-]+)")
_NPM_MISSING = re.compile(r"404 Not Found - GET \S+/(?P<name>(@[^/\s]+/)?[^/\s@]+)")


class ImageBuildError(Exception):
    """A build failed. `field` names the spec entry at fault; `transient` means the host or
    network failed, not the spec."""

    def __init__(self, message: str, *, field: str = "image", transient: bool = False):
        super().__init__(message)
        self.message = message
        self.field = field
        self.transient = transient


def images_root() -> Path:
    return Path(settings.DATA_DIR) / "images"


def image_dir(key: str) -> Path:
    return images_root() / key


def image_log_path(key: str) -> Path:
    return images_root() / "logs" / f"{key}.log"


def manifest_read(key: str) -> dict | None:
    """The manifest of a complete image, or None (missing, half written, another key)."""
    try:
        manifest = json.loads((image_dir(key) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("key") == key else None


def leftovers_remove(key: str) -> None:
    """Remove build directories of `key` a dead builder left. Only the claimer calls this."""
    for path in images_root().glob(f".building-{key}-*"):
        build_tree_remove(path)


def _mounts_under(path: Path) -> list[str]:
    """Mount points of this process's namespace at or below `path`, deepest first."""
    top = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", "rb") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, its space, tab, newline and backslash as octal escapes.
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), line.split()[4])
            where = os.fsdecode(point)
            if where == top or where.startswith(top + "/"):
                found.append(where)
    return sorted(found, key=len, reverse=True)


def build_tree_remove(path: Path) -> None:
    """Remove a build's directory, never through a mount inside it. mmdebstrap (root mode)
    bind-mounts the host's /dev/shm and rbinds /proc and /sys into the root filesystem while
    packages install; a mount left there (an mmdebstrap of before `MMDEBSTRAP_NAMESPACE`,
    killed before its cleanup) made this removal delete the host's /dev/shm files, PostgreSQL's
    shared memory among them. Such mounts are detached first; if one stays, the directory
    stays too."""
    if not os.path.lexists(path):
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", "--lazy", point], capture_output=True, env=HOST_ENV)
    if _mounts_under(path):
        return  # left for an operator: deleting through a mount would reach the host
    shutil.rmtree(path, ignore_errors=True)


def disk_usage(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", "-x", str(path)], capture_output=True, text=True)
    try:
        return int(out.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


class DiskCapPassed(ImageBuildError):
    """The build's directory passed CONVOY_IMAGE_BUILD_DISK_MB; the command was stopped."""


class DiskCap:
    """The whole build's disk (the build directory: the rootfs and what the base step keeps
    beside it), checked while each command runs, as a sandbox's workspace is: each file is
    capped by RLIMIT_FSIZE, and many files by this.

    A walk runs every WATCH_EVERY_S unless the last one ended less than 1 / WALK_SHARE_MAX
    times its cost ago, and sooner when the file system lost more free space since than the
    build had left below its cap. The walk never follows a link a step made."""

    def __init__(self, path: Path, limit_mb: int) -> None:
        self.path, self.limit_mb = path, limit_mb
        self.limit = limit_mb * 1024 * 1024
        self._cost_s, self._ended_at, self._size, self._free = 0.0, float("-inf"), 0, float("inf")

    @property
    def message(self) -> str:
        return f"the build passed its disk limit of {self.limit_mb} MB (CONVOY_IMAGE_BUILD_DISK_MB)"

    def passed(self, *, force: bool = False) -> bool:
        started = time.monotonic()
        free = free_bytes(self.path)
        if (
            not force
            and started - self._ended_at < self._cost_s / WALK_SHARE_MAX
            and free >= self._free - (self.limit - self._size)
        ):
            return False
        self._size = tree_usage(self.path, stop_after=self.limit)
        self._ended_at = time.monotonic()
        self._cost_s, self._free = self._ended_at - started, free
        return self._size > self.limit


class BuildLog:
    """Build output: each line to the log file and to `on_output` (the caller's stream).

    A step's output is the code it runs' to choose: a line is cut at LINE_MAX_CHARS and the log
    stops growing at LOG_MAX_BYTES (one line says so), so that neither the worker's memory nor
    the host's disk is the step's to fill (400 MB without a newline took 1.6 GB of memory)."""

    LINE_MAX_CHARS = 16 * 1024
    LOG_MAX_BYTES = 32 * 1024 * 1024

    def __init__(self, path: Path, on_output: Callable[[str], None] | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("w", encoding="utf-8", errors="replace")
        self._on_output = on_output
        self.tail: list[str] = []
        self._written = 0
        self._full = False
        # Set by rootfs_build for the build's duration: every command is held to it.
        self.disk: DiskCap | None = None

    def line(self, text: str) -> None:
        if len(text) > self.LINE_MAX_CHARS + 64:  # (room for `_lines`' note of what it cut)
            text = text[: self.LINE_MAX_CHARS] + f" [… {len(text) - self.LINE_MAX_CHARS:,} more]"
        self.tail = [*self.tail[-199:], text]
        if self._full or self._written + len(text) > self.LOG_MAX_BYTES:
            if not self._full:
                self._full = True
                self._file.write(f"[convoy: the log stops at {self.LOG_MAX_BYTES:,} bytes]\n")
                self._file.flush()
            return
        self._written += len(text) + 1
        self._file.write(text + "\n")
        self._file.flush()
        if self._on_output is not None:
            self._on_output(text)

    def _lines(self, stream) -> Iterator[str]:
        """The stream's lines, none held longer than LINE_MAX_CHARS (the rest is counted)."""
        limit = self.LINE_MAX_CHARS
        while True:
            raw = stream.readline(limit + 1)
            if not raw:
                return
            if len(raw) > limit and not raw.endswith(b"\n"):
                dropped = 0
                while True:  # the rest of this line, read and dropped in pieces
                    more = stream.readline(65536)
                    dropped += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                text = raw[:limit].decode("utf-8", "replace")
                yield f"{text} [… {dropped + len(raw) - limit:,} more bytes]"
                continue
            yield raw.decode("utf-8", "replace").rstrip("\n")

    def run(
        self, argv: list[str], *, env: dict[str, str] | None = None, pass_fds: tuple = ()
    ) -> int:
        """Run a command, streaming its merged output line by line; its exit status. Past
        COMMAND_TIMEOUT_S its process group is killed (a step's processes included).
        `pass_fds` are handed to it and closed here once it has them."""
        self.line("$ " + " ".join(argv))
        try:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, pass_fds=pass_fds,
            )  # fmt: skip
        finally:
            for fd in pass_fds:
                os.close(fd)
        stopped = threading.Event()

        def stop() -> None:
            stopped.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(COMMAND_TIMEOUT_S, stop)
        timer.daemon = True
        timer.start()
        disk, ended, full = self.disk, threading.Event(), threading.Event()

        def disk_watch() -> None:
            while not ended.wait(WATCH_EVERY_S):
                try:
                    passed = disk.passed()
                except OSError:  # a walk that failed: the next one looks again
                    continue
                if passed:
                    full.set()
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    return

        watcher = threading.Thread(target=disk_watch, daemon=True) if disk else None
        if watcher is not None:
            watcher.start()
        try:
            assert proc.stdout is not None
            for text in self._lines(proc.stdout):
                self.line(text)
            status = proc.wait()
        finally:
            timer.cancel()
            ended.set()
            if watcher is not None:
                watcher.join()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if stopped.is_set():
            self.line(f"[convoy: stopped after {COMMAND_TIMEOUT_S:.0f} s]")
        # A command can write faster than the watch looks: one more look once it is over.
        if disk is not None and (full.is_set() or disk.passed(force=True)):
            self.line(f"[convoy: {disk.message}; stopped]")
            raise DiskCapPassed(disk.message)
        return status

    def close(self) -> None:
        self._file.close()


@dataclass
class BuildResult:
    manifest: dict
    size_bytes: int
    seconds: float


def _step_hook(name: str) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name)


def _build_env(spec: ImageSpec, net: NetworkAttachment, carried: dict[str, str]) -> dict[str, str]:
    env = {
        "PATH": IMAGE_PATH,
        "HOME": BUILD_HOME,
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "npm_config_cache": f"{BUILD_HOME}/.npm",
    }
    env.update(spec.env)
    env.update(carried)
    env.update(net.env)
    return env


# What a build step keeps of root's capabilities, in its own user namespace: what package
# managers and their install scripts use (owners, modes, setuid bits, dropping to a user,
# device nodes), as container engines grant by default, less raw sockets. Not CAP_SYS_ADMIN
# (mounts), nor anything else that reaches past the step's own files and processes.
STEP_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_MKNOD",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE",
)  # fmt: skip


def _bwrap(
    rootfs: Path,
    net: NetworkAttachment,
    binds: list[tuple[str, str]],
    argv: list[str],
    *,
    seccomp_fd: int,
    env_fd: int,
):
    """Run argv as root inside the image being built: its rootfs, writable, as `/`; in a user
    namespace of its own that may not make more, with STEP_CAPABILITIES only and the
    sandboxes' seccomp filter (`seccomp_fd`): a step runs code from package indexes, as root.
    The step's environment is in `env_fd` (`bubblewrap.env_args_fd`): the host's bwrap, `sh`
    and `prlimit` run with HOST_ENV, never with what a spec or an image names."""
    bwrap = shutil.which("bwrap") or "bwrap"  # the worker's own PATH
    out = [bwrap, "--args", str(env_fd), "--bind", str(rootfs), "/", *proc_args(), "--dev", "/dev",
           "--tmpfs", "/tmp",  # noqa: S108
           "--unshare-all", "--unshare-user", "--disable-userns",
           "--die-with-parent", "--new-session", "--cap-drop", "ALL"]  # fmt: skip
    for capability in STEP_CAPABILITIES:
        out += ["--cap-add", capability]
    out += ["--seccomp", str(seccomp_fd)]
    out += net.bwrap_args
    for host, inside in binds:
        out += ["--ro-bind", host, inside]
    out += ["--chdir", "/", "--", *net.argv_prefix, *argv]
    return out


def _missing(log: BuildLog, patterns, spec: ImageSpec, step: str) -> ImageBuildError | None:
    for text in reversed(log.tail):
        for pattern in patterns:
            match = pattern.search(text)
            if match:
                name = match["name"]
                return ImageBuildError(
                    f"package not found: {name}", field=field_for_package(spec, step, name)
                )
    return None


def base_env(home: Path) -> dict[str, str]:
    """mmdebstrap's environment: HOST_ENV, the host's proxy and CA variables (apt fetches
    with them) and a HOME of its own. mmdebstrap hands its environment to the packages'
    maintainer scripts, run as root: the worker's (its tokens, the database's URL) reached
    them."""
    env = {k: v for k, v in oci_tool_env(home).items() if k not in ("PATH", "LANG", "LANGUAGE")}
    env = {k: v for k, v in env.items() if not k.startswith("LC_")}
    env.update(HOST_ENV)
    return env


def _base(
    spec: ImageSpec, rootfs: Path, workdir: Path, log: BuildLog, creds, resolved_base: dict
) -> dict:
    if spec.kind == "oci":
        try:  # the digest in the key, not the tag again: it may have moved since
            return oci_pull(spec, workdir=workdir, rootfs=rootfs, run=log.run, line=log.line,
                            arch=host_architecture(), digest=resolved_base.get("digest", ""),
                            creds=creds)  # fmt: skip
        except OciError as exc:
            raise ImageBuildError(f"{exc} (see the build log)", field="image.oci") from exc
    argv = [*MMDEBSTRAP_NAMESPACE, "mmdebstrap", "--variant=apt", "--format=directory"]
    packages = spec.apt_packages()
    if packages:
        argv.append("--include=" + ",".join(packages))
    # No mirror argument: mmdebstrap uses the host's apt sources.
    argv += [spec.base, str(rootfs)]
    home = workdir / "base-home"
    home.mkdir(mode=0o700)
    try:
        status = log.run(argv, env=base_env(home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if status != 0:
        missing = _missing(log, _APT_MISSING, spec, "apt")
        if missing:
            raise missing
        raise ImageBuildError(
            "mmdebstrap failed (see the build log)", field="image.base", transient=True
        )
    return {"env": [], "cwd": "/"}


def _dpkg_versions(rootfs: Path) -> dict[str, str]:
    text = _image_file_read(rootfs, "/var/lib/dpkg/status")
    if not text:
        return {}
    versions = {}
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "install ok installed" in fields.get("Status", "") and "Package" in fields:
            versions[fields["Package"]] = fields.get("Version", "")
    return versions


# What one build step may use of the host. A step runs package install scripts as root in its
# user namespace: its memory and processes are held by a cgroup of its own, the largest file
# it may write and its CPU time by rlimits, both in place before bwrap starts, so every process
# of the step is born under them.
STEP_MEMORY_MB = 4096
STEP_PIDS_MAX = 4096
STEP_FILE_MB = 4096


def _limited(argv: list[str], cgroup_paths: list[str]) -> list[str]:
    """`argv` started in the step's cgroups (the shell moves itself in, then execs) under
    `prlimit`'s file-size and core limits."""
    enter = "".join(f"echo $$ > {shlex.quote(p + '/cgroup.procs')} && " for p in cgroup_paths)
    limits = [
        f"--fsize={STEP_FILE_MB * 1024 * 1024}",
        "--core=0",
    ]  # no CPU-time limit: it counts every thread of a process (a 16-thread compiler would
    # reach an hour's in four minutes); the cgroup's CPU share and the step timeout bound it
    sh, prlimit = shutil.which("sh") or "/bin/sh", shutil.which("prlimit") or "prlimit"
    return [sh, "-c", enter + 'exec "$@"', "sh", prlimit, *limits, "--", *argv]


def _step_run(log: BuildLog, argv: Callable[[int, int], list[str]], *, env: dict, name: str) -> int:
    """One step (`argv(seccomp_fd, env_fd)`) in a cgroup of its own, removed after it with
    anything it left running; a line in the log when it reached the memory or process limit."""
    paths = cgroups.cgroup_create(
        f"{secrets.token_hex(6)}-{name.replace('[', '-').rstrip(']')}",
        owner="build",
        memory_bytes=STEP_MEMORY_MB * 1024 * 1024,
        pids_max=STEP_PIDS_MAX,
        cpu=float(os.cpu_count() or 1),
    )
    seccomp_fd, env_fd = seccomp.filter_fd(), env_args_fd(env)
    try:
        status = log.run(
            _limited(argv(seccomp_fd, env_fd), paths), env=HOST_ENV, pass_fds=(seccomp_fd, env_fd)
        )
        hit = cgroups.limit_counters(paths)
    finally:
        cgroups.cgroup_kill(paths)
        cgroups.cgroup_remove(paths)
    if status != 0 and hit.get("memory"):
        log.line(f"[convoy: the step reached its memory limit ({STEP_MEMORY_MB} MB)]")
    if status != 0 and hit.get("pids"):
        log.line(f"[convoy: the step reached its process limit ({STEP_PIDS_MAX})]")
    return status


def _steps_run(spec, key, rootfs, steps, log: BuildLog, network: BuildNetwork) -> None:
    """Run the pip, npm and run steps inside the image, on the build's network."""
    carried = package_client_config()
    index_urls = [] if spec.kind == "oci" else apt_uris_read(rootfs / "etc" / "apt")
    with network(key, index_urls=index_urls) as net:
        _root_files(rootfs, net)
        env = _build_env(spec, net, carried.env)
        previous = ""
        for name, where, argv in steps:
            _step_hook(name)
            _mountpoints_check(rootfs, after=previous)
            previous = where
            try:
                status = _step_run(
                    log,
                    lambda fd, env_fd, argv=argv: _bwrap(
                        rootfs, net, carried.binds, argv, seccomp_fd=fd, env_fd=env_fd
                    ),
                    env=env,
                    name=name,
                )
            except DiskCapPassed as exc:
                raise DiskCapPassed(exc.message, field=where) from None
            notes = net.after_step(status != 0)
            for line in notes:
                log.line(line)
            if status != 0:
                step = name.split("[")[0]
                patterns = {"pip": (_PIP_MISSING,), "npm": (_NPM_MISSING,)}.get(step, ())
                missing = _missing(log, patterns, spec, step)
                last = notes[-1] if notes else (log.tail or [""])[-1]
                raise missing or ImageBuildError(
                    f"{where} failed with exit status {status}: {last[:300]}", field=where
                )


def _root_files(rootfs: Path, net: NetworkAttachment) -> None:
    """The network's files (apt's proxy), where the image has their directory."""
    for inside, text in net.root_files.items():
        _image_file_write(rootfs, inside, text)


def rootfs_build(
    *,
    spec: ImageSpec,
    key: str,
    resolved_base: dict,
    log: BuildLog,
    network: BuildNetwork,
    creds: str | None = None,
) -> BuildResult:
    """Build the image for `key` and rename it into place; raise ImageBuildError on failure
    (nothing is left under `<key>`). The caller holds the build claim for `key`."""
    started = time.monotonic()
    root = images_root()
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".building-{key}-{secrets.token_hex(4)}"
    work.mkdir()
    rootfs = work / "rootfs"
    log.disk = DiskCap(work, settings.IMAGE_BUILD_DISK_MB)
    try:
        _step_hook("base")
        oci_config = _base(spec, rootfs, work, log, creds, resolved_base)
        _mountpoints_check(rootfs)
        steps: list[tuple[str, str, list[str]]] = []
        if spec.pip:
            venv = f"test -x {VENV}/bin/python || python3 -m venv {VENV}"
            steps.append(("pip", "image.pip", ["/bin/sh", "-c", venv]))
            steps.append(("pip", "image.pip", [f"{VENV}/bin/pip", "install", *spec.pip]))
        if spec.npm:
            npm = ["npm", "install", "--global", "--prefix", NPM_PREFIX, *spec.npm]
            steps.append(("npm", "image.npm", npm))
        for i, command in enumerate(spec.run):
            steps.append((f"run[{i}]", f"image.run[{i}]", ["/bin/sh", "-c", command]))
        if steps:
            _steps_run(spec, key, rootfs, steps, log, network)
        _step_hook("finish")
        _mountpoints(rootfs)
        _mountpoints_check(rootfs, complete=True, after=steps[-1][1] if steps else "")
        size = disk_usage(rootfs)
        manifest = {
            "key": key,
            "spec": spec.canonical(),
            "resolved_base": resolved_base,
            "built_at": datetime.now(UTC).isoformat(),
            "size_bytes": size,
            "env": _image_env(spec, oci_config["env"]),
            "cwd": oci_config["cwd"],
            "packages": _dpkg_versions(rootfs),
        }
        # Written last, then one rename: a crash before it leaves only a .building-* directory.
        tmp = work / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, work / "manifest.json")
        final = image_dir(key)
        if manifest_read(key) is not None:
            build_tree_remove(work)  # a builder that took over finished first
        else:
            build_tree_remove(final)  # an incomplete directory, if any
            work.rename(final)
        return BuildResult(manifest, size, time.monotonic() - started)
    except BaseException:
        build_tree_remove(work)
        raise
    finally:
        log.disk = None


def _in_image(rootfs: Path, inside: str) -> Path | None:
    """`inside` as a host path within the image's rootfs, its parent's links resolved; None when
    a link leads out of the rootfs. The builder writes here as root on the host, after steps
    that could make `/etc` a link to the host's `/etc`: never follow one out."""
    root = rootfs.resolve()
    path = root / inside.lstrip("/")
    parent = path.parent.resolve()
    if parent != root and not parent.is_relative_to(root):
        return None
    return parent / path.name


def _image_file_read(rootfs: Path, inside: str) -> str | None:
    """The text of the image's file `inside`: "" when there is none; None when it is not a
    regular file (a link, a FIFO whose open would stall the build, a device), is reached
    through a link out of the image, or is over FILE_READ_MAX. The builder reads as root on
    the host, after its steps (the image's or a `run` step's files) have ended."""
    path = _in_image(rootfs, inside)
    if path is None:
        return None
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size > FILE_READ_MAX:
            return None
        return f.read(FILE_READ_MAX).decode("utf-8", "replace")


def _image_file_write(rootfs: Path, inside: str, text: str) -> bool:
    """Write the image's file `inside` where its directory exists and nothing but a regular
    file is there (never through a link, into a FIFO or a device); whether it was written."""
    path = _in_image(rootfs, inside)
    if path is None or not path.parent.is_dir():
        return False
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False  # a link, a FIFO or a device: not opened at all
    except FileNotFoundError:
        pass
    except OSError:
        return False
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        return False
    with os.fdopen(fd, "wb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        f.truncate(0)
        f.write(text.encode())
    return True


def _mountpoints(rootfs: Path) -> None:
    """Directories and files backends mount over: a read-only rootfs cannot grow them later.
    Nothing is written through a link: a link an image made stays as it is."""
    for directory in MOUNTPOINT_DIRS:
        parts = directory.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            path = _in_image(rootfs, "/".join(parts[:depth]))
            if path is None or path.is_symlink():
                break
            path.mkdir(exist_ok=True)
    for name in MOUNTPOINT_FILES:
        path = _in_image(rootfs, name)
        if path is not None and not path.exists() and not path.is_symlink():
            path.touch()
    for name, line, owned in (
        ("passwd", SANDBOX_USER, ":1000:1000:"),
        ("group", SANDBOX_GROUP, ":1000:"),
    ):
        text = _image_file_read(rootfs, f"/etc/{name}")
        if text is not None and owned not in text:
            ending = "" if not text or text.endswith("\n") else "\n"
            _image_file_write(rootfs, f"/etc/{name}", text + ending + line + "\n")
    for name, text in (("hosts", SANDBOX_HOSTS), ("gitconfig", SANDBOX_GITCONFIG)):
        found = _image_file_read(rootfs, f"/etc/{name}")
        if found is not None and not found.strip():
            _image_file_write(rootfs, f"/etc/{name}", text)


def _mountpoints_check(rootfs: Path, *, complete: bool = False, after: str = "") -> None:
    """Refuse the image when a part of a mount point's path is a link, or not a directory (or,
    `complete`, missing): bwrap mounts after moving the host's root to /oldroot, so a build
    step's or a sandbox's bwrap followed `/convoy -> /oldroot/X` to the host's X and made the
    mount points it missed there (as root, for a step). Checked after the base, before every
    step (one could have made such a link: `after` names it) and once the mount points are
    made, with the host's CA files, which sandboxes with egress get at the same path."""
    wanted = [(path, "dir") for path in MOUNTPOINT_DIRS]
    wanted += [(path, "file") for path in MOUNTPOINT_FILES]
    if complete:
        cas = sorted({os.environ[name] for name in CA_VARIABLES if os.environ.get(name)})
        wanted += [(path, "any") for path in cas if path.startswith("/")]
    for inside, kind in wanted:
        fault = mountpoint_fault(rootfs, inside, kind=kind, complete=complete and kind != "any")
        if fault:
            made = f" after {after}" if after else ""
            raise ImageBuildError(
                f"{fault}{made}: sandboxes mount {inside} there, and a mount point's path must"
                " be the image's own directories"
            )


def _image_env(spec: ImageSpec, oci_env: list[str]) -> dict[str, str]:
    """What a sandbox on this image gets: the OCI image's own env, the spec's, and a PATH that
    puts the image's virtualenv and npm tools first."""
    env = dict(item.split("=", 1) for item in oci_env if "=" in item)
    env.update(spec.env)
    base_path = env.get("PATH", SYSTEM_PATH)
    ours = [f"{VENV}/bin", f"{NPM_PREFIX}/bin"]
    env["PATH"] = ":".join([*ours, *(p for p in base_path.split(":") if p and p not in ours)])
    return env
