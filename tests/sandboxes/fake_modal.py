"""FakeModal: a stand-in for the `modal` SDK surface the Modal backend uses (Modal's cloud
cannot be reached from the test machines).

It behaves like Modal where the backend can tell: every call is checked against the real
SDK's signature, errors are the real `modal.exception` classes, each fake sandbox is a
directory mounted at its workdir (with bubblewrap when present, so `/workspace/...` paths
work and `block_network` really removes the network; paths in top-level directories the host
lacks, such as /convoy, work too), commands are local processes with
separate stdout/stderr pipes, `wait()` returns -1 when the exec deadline passes (the process
group is killed) and 128+N after signal N, and a filesystem snapshot is a copy of the
sandbox's directory that later creates start from.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import queue
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import modal
import modal.exception
from modal.sandbox.sandbox import SandboxFilesystem

BWRAP = shutil.which("bwrap")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HIDDEN_TOP = {"proc", "dev", "sys", "tmp", "run"}


def _bind(real: Callable, args: tuple, kwargs: dict, *, method: bool = False) -> None:
    """Refuse a call the real SDK function would refuse (unknown keyword, missing argument)."""
    signature = inspect.signature(real)
    if method:
        args = (None, *args)
    signature.bind(*args, **kwargs)


class FakeApp:
    def __init__(self, name: str, app_id: str) -> None:
        self.name = name
        self.app_id = app_id


class FakeImage:
    def __init__(
        self,
        object_id: str,
        *,
        tag: str = "",
        files: Path | None = None,
        extra: Path | None = None,
        chain: tuple = (),
        fake: FakeModal | None = None,
    ) -> None:
        self.object_id = object_id
        self.tag = tag
        self.files = files  # a snapshot's copy of the workspace
        self.extra = extra  # and of the directories made outside it (see FakeSandbox.extra)
        # A declared image: its builder calls in order, (name, args, kwargs), first the start
        # (debian_slim, from_registry); Modal builds it at the first create that uses it.
        self.chain = chain
        self._fake = fake

    @property
    def steps(self) -> list[str]:
        return [name for name, _, _ in self.chain]

    @property
    def env_vars(self) -> dict[str, str]:
        """What the image's `env` layers set (a sandbox on it starts with these)."""
        env: dict[str, str] = {}
        for name, args, kwargs in self.chain:
            if name == "env":
                env.update(args[0] if args else kwargs["vars"])
        return env

    def _then(self, name: str, real: Callable, args: tuple, kwargs: dict) -> FakeImage:
        _bind(real, args, kwargs, method=True)
        return FakeImage(
            self._fake._new_id("im"),
            tag=self.tag,
            chain=(*self.chain, (name, args, kwargs)),
            fake=self._fake,
        )

    def apt_install(self, *args, **kwargs) -> FakeImage:
        return self._then("apt_install", modal.Image.apt_install, args, kwargs)

    def pip_install(self, *args, **kwargs) -> FakeImage:
        return self._then("pip_install", modal.Image.pip_install, args, kwargs)

    def run_commands(self, *args, **kwargs) -> FakeImage:
        return self._then("run_commands", modal.Image.run_commands, args, kwargs)

    def env(self, *args, **kwargs) -> FakeImage:
        return self._then("env", modal.Image.env, args, kwargs)


class FakeSecret:
    def __init__(self, env_dict: dict[str, str]) -> None:
        self.env_dict = dict(env_dict)


class FakeStreamReader:
    """One output stream. Like Modal, output is buffered until read, so a writer never blocks."""

    def __init__(self, text: bool, fail: Callable[[], None] = lambda: None) -> None:
        self._text = text
        self._fail = fail
        self._chunks: queue.Queue = queue.Queue()
        self._eof = False

    def next_chunk(self) -> bytes | None:
        """The next chunk as bytes, None at the end (FakeE2B reads chunks in arrival order)."""
        return self._chunks.get()

    def __iter__(self) -> Iterator:
        self._fail()
        while not self._eof:
            chunk = self._chunks.get()
            if chunk is None:
                self._eof = True
                return
            yield chunk.decode(errors="replace") if self._text else chunk

    def read(self):
        parts = list(self)
        return ("" if self._text else b"").join(parts)


class FakeContainerProcess:
    def __init__(
        self, popen: subprocess.Popen, *, timeout: int | None, text: bool, fail=lambda: None
    ) -> None:
        self._popen = popen
        self._timed_out = False
        self._returncode: int | None = None
        self.stdout = FakeStreamReader(text, fail)
        self.stderr = FakeStreamReader(text, fail)
        # The stream name of every chunk (and of each end), in the order the output arrived.
        self.arrivals: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self._watchdog = threading.Thread(target=self._watch, args=(timeout,), daemon=True)
        self._watchdog.start()

    def _drain(self) -> None:
        """Both pipes in one thread: epoll reports ready pipes in the order they became ready."""
        streams = {
            "stdout": (self._popen.stdout, self.stdout),
            "stderr": (self._popen.stderr, self.stderr),
        }
        with selectors.DefaultSelector() as selector:
            for name, (pipe, _) in streams.items():
                selector.register(pipe, selectors.EVENT_READ, name)
            while selector.get_map():
                for key, _ in selector.select():
                    pipe, reader = streams[key.data]
                    try:
                        chunk = os.read(key.fd, 65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        selector.unregister(pipe)
                        pipe.close()
                    reader._chunks.put(chunk or None)
                    self.arrivals.put(key.data)

    def _watch(self, timeout: int | None) -> None:
        try:
            self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            self.kill()
            self._popen.wait()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def wait(self) -> int:
        self._watchdog.join()
        if self._timed_out:
            self._returncode = -1  # what Modal's wait() returns when the exec deadline passes
        else:
            code = self._popen.returncode
            self._returncode = 128 - code if code < 0 else code
        return self._returncode

    def poll(self) -> int | None:
        return None if self._watchdog.is_alive() else self.wait()

    @property
    def returncode(self) -> int:
        if self._returncode is None:
            raise modal.exception.InvalidError(
                "You must call wait() before accessing the returncode."
            )
        return self._returncode


class FakeFilesystem:
    def __init__(self, sandbox: FakeSandbox) -> None:
        self._sandbox = sandbox

    def _local(self, remote_path: str, operation: str) -> Path:
        path = PurePosixPath(remote_path)
        if not path.is_absolute():
            raise modal.exception.InvalidError(
                f"Sandbox.filesystem.{operation}() currently only supports absolute remote_path"
            )
        if ".." in path.parts:
            raise modal.exception.SandboxFilesystemPermissionError(f"{remote_path}: '..'")
        workdir = PurePosixPath(self._sandbox.workdir)
        if path.is_relative_to(workdir):
            return self._sandbox.files / path.relative_to(workdir)
        if path.is_relative_to("/tmp") and len(path.parts) > 2:  # its execs' shared /tmp
            return self._sandbox.tmp / path.relative_to("/tmp")
        if len(path.parts) > 2 and not os.path.lexists(f"/{path.parts[1]}"):
            return self._sandbox.extra / path.relative_to("/")
        raise modal.exception.SandboxFilesystemPermissionError(
            f"FakeModal keeps files only under the workdir {workdir}, /tmp or a top-level "
            f"directory the host lacks, not {remote_path}"
        )

    def write_bytes(self, data, remote_path: str) -> None:
        self._sandbox._check_running()
        local = self._local(remote_path, "write_bytes")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(bytes(data))

    def make_directory(self, *args, **kwargs) -> None:
        _bind(SandboxFilesystem.make_directory, args, kwargs, method=True)
        self._sandbox._check_running()
        remote_path = args[0] if args else kwargs["remote_path"]
        self._local(remote_path, "make_directory").mkdir(
            parents=kwargs.get("create_parents", True), exist_ok=True
        )

    def read_bytes(self, remote_path: str) -> bytes:
        self._sandbox._check_running()
        local = self._local(remote_path, "read_bytes")
        if local.is_dir():
            raise modal.exception.SandboxFilesystemIsADirectoryError(remote_path)
        if not local.exists():
            raise modal.exception.SandboxFilesystemNotFoundError(remote_path)
        return local.read_bytes()


class FakeSandbox:
    def __init__(self, fake: FakeModal, object_id: str, kwargs: dict) -> None:
        self._fake = fake
        self.object_id = object_id
        self.app_id = kwargs["app"].app_id
        self.workdir = kwargs.get("workdir") or "/"
        self.tags = dict(kwargs.get("tags") or {})
        # A declared image's `env` layers, as Modal sets them in the container (snapshots: none).
        env = {**getattr(kwargs.get("image"), "env_vars", {}), **(kwargs.get("env") or {})}
        self.env = {k: v for k, v in env.items() if v is not None}
        self.block_network = kwargs.get("block_network", False)
        self.files = fake.root / object_id / "files"
        # Top-level directories the host lacks (e.g. /convoy), bound writable as in a container.
        self.extra = fake.root / object_id / "extra"
        self.tmp = fake.root / object_id / "tmp"
        image = kwargs["image"]
        if image is not None and image.files is not None:
            shutil.copytree(image.files, self.files, symlinks=True)
            shutil.copytree(image.extra, self.extra, symlinks=True)
        else:
            self.files.mkdir(parents=True)
            self.extra.mkdir(parents=True)
        self.tmp.mkdir(parents=True)
        self.filesystem = FakeFilesystem(self)
        self._returncode: int | None = None
        self._processes: list[FakeContainerProcess] = []
        self._lock = threading.Lock()

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def poll(self) -> int | None:
        return self._returncode

    def get_tags(self) -> dict[str, str]:
        self._fake._maybe_fail("get_tags")
        return dict(self.tags)

    def _check_running(self) -> None:
        if self._returncode is not None:
            raise modal.exception.SandboxTerminatedError(f"{self.object_id} has finished")

    def _command(self, args: tuple[str, ...], workdir: str) -> list[str]:
        if not BWRAP:
            return list(args)
        # One pid space and one /tmp for all of a sandbox's execs, as in a Modal container.
        command = [BWRAP, "--die-with-parent", "--unshare-ipc"]
        if self.block_network:
            command.append("--unshare-net")
        top = PurePosixPath(self.workdir).parts[1] if self.workdir != "/" else ""
        for entry in sorted(os.listdir("/")):
            if entry in _HIDDEN_TOP or entry == top:
                continue
            path = f"/{entry}"
            if os.path.islink(path):
                command += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                command += ["--ro-bind", path, path]
        command += ["--proc", "/proc", "--dev", "/dev", "--bind", str(self.tmp), "/tmp"]
        for entry in sorted(os.listdir(self.extra)):
            if not os.path.lexists(f"/{entry}"):
                command += ["--bind", str(self.extra / entry), f"/{entry}"]
        command += ["--bind", str(self.files), self.workdir, "--chdir", workdir, "--", *args]
        return command

    def exec(self, *args: str, **kwargs) -> FakeContainerProcess:
        _bind(modal.Sandbox.exec, args, kwargs, method=True)
        self._fake.record("Sandbox.exec", sandbox_id=self.object_id, args=args, **kwargs)
        self._fake._maybe_fail("exec")
        self._check_running()
        workdir = kwargs.get("workdir") or self.workdir
        if not PurePosixPath(workdir).is_absolute():
            raise modal.exception.InvalidError("workdir must be an absolute path")
        # Without bubblewrap the workdir is the sandbox's directory itself.
        cwd = None if BWRAP else self.files / PurePosixPath(workdir).relative_to(self.workdir)
        env = {"PATH": _PATH, "HOME": "/root", **self.env}
        env.update({k: v for k, v in (kwargs.get("env") or {}).items() if v is not None})
        popen = subprocess.Popen(
            self._command(args, workdir),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        process = FakeContainerProcess(
            popen,
            timeout=kwargs.get("timeout"),
            text=kwargs.get("text", True),
            fail=lambda: self._fake._maybe_fail("stream"),
        )
        with self._lock:
            self._processes.append(process)
        return process

    def snapshot_filesystem(self, *args, **kwargs) -> FakeImage:
        _bind(modal.Sandbox.snapshot_filesystem, args, kwargs, method=True)
        self._fake.record("Sandbox.snapshot_filesystem", sandbox_id=self.object_id, **kwargs)
        self._fake._maybe_fail("snapshot_filesystem")
        self._check_running()
        image_id = self._fake._new_id("im")
        target = self._fake.root / "images" / image_id
        shutil.copytree(self.files, target / "files", symlinks=True)
        shutil.copytree(self.extra, target / "extra", symlinks=True)
        image = FakeImage(image_id, files=target / "files", extra=target / "extra")
        self._fake.images[image_id] = image
        self._fake.snapshot_calls.append(kwargs)
        return image

    def detach(self) -> None:
        self._fake.detached.append(self.object_id)

    def terminate(self, *, wait: bool = False) -> int | None:
        self._fake.record("Sandbox.terminate", sandbox_id=self.object_id)
        self._fake._maybe_fail("terminate")
        with self._lock:
            if self._returncode is None:
                self._returncode = 137
                for process in self._processes:
                    process.kill()
                for process in self._processes:
                    process.wait()
                shutil.rmtree(self.files.parent, ignore_errors=True)
        return self._returncode if wait else None


class _FakeAppAPI:
    def __init__(self, fake: FakeModal) -> None:
        self._fake = fake

    def lookup(self, *args, **kwargs) -> FakeApp:
        _bind(modal.App.lookup, args, kwargs)
        name = args[0] if args else kwargs["name"]
        if name not in self._fake.apps:
            if not kwargs.get("create_if_missing"):
                raise modal.exception.NotFoundError(f"App '{name}' not found")
            self._fake.apps[name] = FakeApp(name, self._fake._new_id("ap"))
        return self._fake.apps[name]


class _FakeImageAPI:
    def __init__(self, fake: FakeModal) -> None:
        self._fake = fake

    def from_registry(self, *args, **kwargs) -> FakeImage:
        _bind(modal.Image.from_registry, args, kwargs)
        tag = args[0] if args else kwargs["tag"]
        chain = (("from_registry", args, kwargs),)
        return FakeImage(self._fake._new_id("im"), tag=tag, chain=chain, fake=self._fake)

    def debian_slim(self, *args, **kwargs) -> FakeImage:
        _bind(modal.Image.debian_slim, args, kwargs)
        chain = (("debian_slim", args, kwargs),)
        return FakeImage(self._fake._new_id("im"), chain=chain, fake=self._fake)

    def from_id(self, image_id: str, client=None) -> FakeImage:
        try:
            return self._fake.images[image_id]
        except KeyError:
            raise modal.exception.NotFoundError(f"Image {image_id} not found") from None


class _FakeSecretAPI:
    def __init__(self, fake: FakeModal) -> None:
        self._fake = fake

    def from_dict(self, *args, **kwargs) -> FakeSecret:
        _bind(modal.Secret.from_dict, args, kwargs)
        secret = FakeSecret(args[0] if args else kwargs.get("env_dict", {}))
        self._fake.secrets.append(secret)
        return secret


class _FakeSandboxAPI:
    def __init__(self, fake: FakeModal) -> None:
        self._fake = fake

    def create(self, *args, **kwargs) -> FakeSandbox:
        _bind(modal.Sandbox.create, args, kwargs)
        self._fake._maybe_fail("create")
        if kwargs.get("app") is None:
            raise modal.exception.InvalidError("App must be provided to create a Sandbox")
        sandbox = FakeSandbox(self._fake, self._fake._new_id("sb"), kwargs)
        self._fake.sandboxes[sandbox.object_id] = sandbox
        self._fake.create_calls.append({"at": self._fake.clock(), **kwargs})
        self._fake.record("Sandbox.create", sandbox_id=sandbox.object_id, **kwargs)
        return sandbox

    def from_id(self, sandbox_id: str, client=None) -> FakeSandbox:
        self._fake._maybe_fail("from_id")
        try:
            return self._fake.sandboxes[sandbox_id]
        except KeyError:
            raise modal.exception.NotFoundError(f"Sandbox {sandbox_id} not found") from None

    def list(self, *args, **kwargs) -> Iterator[FakeSandbox]:
        _bind(modal.Sandbox.list, args, kwargs)
        self._fake._maybe_fail("list")
        app_id, tags = kwargs.get("app_id"), kwargs.get("tags") or {}
        for sandbox in reversed(list(self._fake.sandboxes.values())):
            if sandbox.returncode is not None or (app_id and sandbox.app_id != app_id):
                continue
            if all(sandbox.tags.get(k) == v for k, v in tags.items()):
                yield sandbox


class FakeModal:
    """The `modal` module as far as the backend uses it, backed by local directories."""

    exception = modal.exception

    def __init__(self, root: Path | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.root = Path(root or tempfile.mkdtemp(prefix="fake-modal-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.apps: dict[str, FakeApp] = {}
        self.images: dict[str, FakeImage] = {}
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.create_calls: list[dict] = []
        self.snapshot_calls: list[dict] = []
        self.detached: list[str] = []
        self.calls: list[tuple[str, dict]] = []  # every create, exec, snapshot and terminate
        self._calls_lock = threading.Lock()
        self._failures: dict[str, list[BaseException]] = {}
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        self.App = _FakeAppAPI(self)
        self.Image = _FakeImageAPI(self)
        self.Sandbox = _FakeSandboxAPI(self)
        self.Secret = _FakeSecretAPI(self)
        self.secrets: list[FakeSecret] = []

    def _new_id(self, prefix: str) -> str:
        with self._ids_lock:
            return f"{prefix}-fake{next(self._ids):06d}"

    def record(self, call: str, **kwargs) -> None:
        with self._calls_lock:
            self.calls.append((call, kwargs))

    def called(self, call: str) -> list[dict]:
        return [kwargs for name, kwargs in self.calls if name == call]

    def fail_next(self, call: str, error: BaseException, *, times: int = 1) -> None:
        """Make the next `times` calls named `call` ("create", "exec", …) raise `error`."""
        self._failures.setdefault(call, []).extend([error] * times)

    def _maybe_fail(self, call: str) -> None:
        pending = self._failures.get(call)
        if pending:
            raise pending.pop(0)

    def running(self) -> list[FakeSandbox]:
        return [sb for sb in self.sandboxes.values() if sb.returncode is None]

    def close(self) -> None:
        """Terminate every fake sandbox and remove every file the fake made."""
        self._failures.clear()
        for sandbox in list(self.sandboxes.values()):
            sandbox.terminate()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def modal_fake_backend(root: Path | None = None, **backend_kwargs):
    """A ModalBackend wired to a FakeModal; everything it made is gone afterwards."""
    from sandboxes.backends.modal import ModalBackend
    from sandboxes.pacing import TokenBucket

    fake = FakeModal(root)
    backend_kwargs.setdefault("create_bucket", TokenBucket(rate=1000))
    backend = ModalBackend(sdk=fake, app_name="convoy-test", **backend_kwargs)
    backend.fake = fake
    try:
        yield backend
    finally:
        fake.close()
