"""FakeE2B: a stand-in for the `e2b` SDK surface the E2B backend uses (E2B's cloud cannot be
reached from the test machines).

Every call is checked against the real SDK's signature and recorded in `calls`; errors are the
real `e2b` exception classes (a non-zero exit raises `CommandExitException`, as E2B does). The
sandboxes themselves are FakeModal's local machinery: a directory mounted at /workspace (with
bubblewrap), commands as local processes, a snapshot as a copy of the files. What the fake
cannot be: a memory snapshot (a create from a snapshot starts with its files, no processes),
and a domain filter (an allowlist blocks the network entirely here; E2B would let the named
hosts through).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from pathlib import Path

import e2b
import e2b.exceptions
import modal.exception
from e2b.sandbox_sync.commands.command import Commands
from e2b.sandbox_sync.filesystem.filesystem import Filesystem

from tests.sandboxes.fake_modal import FakeApp, FakeModal, FakeSandbox


def _bind(real, args: tuple, kwargs: dict, *, method: bool = False) -> None:
    """Refuse a call the real SDK function would refuse (unknown keyword, missing argument)."""
    signature = inspect.signature(real)
    signature.bind(*((None, *args) if method else args), **kwargs)


class FakeCommandHandle:
    """`commands.run(background=True)`: iterate (stdout, stderr, pty) tuples, then `wait()`."""

    def __init__(self, process) -> None:
        self._process = process
        self._done = False

    def __iter__(self):
        # E2B sends a command's output as one ordered stream of events: read the fake machine's
        # chunks in the order they arrived, not from one thread per pipe.
        readers = {"stdout": self._process.stdout, "stderr": self._process.stderr}
        open_streams = 0 if self._done else 2
        while open_streams:
            stream = self._process.arrivals.get()
            chunk = readers[stream].next_chunk()
            if chunk is None:
                open_streams -= 1
                continue
            text = chunk.decode(errors="replace")  # E2B decodes output as UTF-8 too
            yield (text, None, None) if stream == "stdout" else (None, text, None)
        self._done = True

    def wait(self, on_pty=None, on_stdout=None, on_stderr=None):
        for _ in self:
            pass
        code = self._process.wait()
        if code != 0:
            raise e2b.CommandExitException(stdout=None, stderr=None, exit_code=code, error=None)
        return e2b.CommandResult(stdout=None, stderr=None, exit_code=0, error=None)

    def kill(self) -> bool:
        self._process.kill()
        return True

    def disconnect(self) -> None:
        self._done = True


class FakeCommands:
    def __init__(self, sandbox: FakeE2BSandbox) -> None:
        self._sandbox = sandbox

    def run(self, cmd: str, *args, **kwargs):
        _bind(Commands.run, (cmd, *args), kwargs, method=True)
        fake = self._sandbox.fake
        fake.record("commands.run", cmd=cmd, **kwargs)
        fake.maybe_fail("commands.run")
        machine = self._sandbox.machine_sandbox()
        try:
            process = machine.exec(
                "sh", "-c", cmd, workdir=kwargs.get("cwd") or "/workspace",
                env=kwargs.get("envs"), text=False,
            )  # fmt: skip
        except modal.exception.SandboxTerminatedError as error:
            raise e2b.exceptions.SandboxNotRunningException(str(error)) from None
        handle = FakeCommandHandle(process)
        if kwargs.get("background"):
            return handle
        out, err = [], []
        for stdout, stderr, _ in handle:
            (out.append(stdout) if stdout else err.append(stderr))
        code = process.wait()
        if code != 0:
            raise e2b.CommandExitException(
                stdout="".join(out), stderr="".join(err), exit_code=code, error=None
            )
        return e2b.CommandResult(stdout="".join(out), stderr="".join(err), exit_code=0, error=None)


class FakeFiles:
    def __init__(self, sandbox: FakeE2BSandbox) -> None:
        self._sandbox = sandbox

    def write(self, path: str, data, *args, **kwargs):
        _bind(Filesystem.write, (path, data, *args), kwargs, method=True)
        self._sandbox.fake.record("files.write", path=path, **kwargs)
        machine = self._sandbox.machine_sandbox()
        machine.filesystem.write_bytes(bytes(data), path)

    def read(self, path: str, *args, **kwargs):
        _bind(Filesystem.read, (path, *args), kwargs, method=True)
        self._sandbox.fake.record("files.read", path=path, **kwargs)
        machine = self._sandbox.machine_sandbox()
        try:
            data = machine.filesystem.read_bytes(path)
        except modal.exception.SandboxFilesystemNotFoundError:
            raise e2b.exceptions.FileNotFoundException(f"path '{path}' does not exist") from None
        return bytearray(data) if kwargs.get("format") == "bytes" else data.decode()


class FakeInfo:
    def __init__(self, sandbox: FakeE2BSandbox) -> None:
        self.sandbox_id = sandbox.sandbox_id
        self.metadata = dict(sandbox.metadata)
        self.state = sandbox.state


class FakeE2BSandbox:
    def __init__(self, fake: FakeE2B, sandbox_id: str, kwargs: dict, image) -> None:
        self.fake = fake
        self.sandbox_id = sandbox_id
        self.metadata = dict(kwargs.get("metadata") or {})
        self.template = kwargs.get("template")  # a template name, or a snapshot id
        self.state = "running"
        network = kwargs.get("network") or {}
        self.block_network = kwargs.get("allow_internet_access") is False or bool(
            network.get("deny_out")
        )
        self.machine = FakeSandbox(
            fake.machine,
            sandbox_id,
            {
                "app": fake.app,
                "workdir": "/workspace",
                "env": kwargs.get("envs") or {},
                "block_network": self.block_network,
                "image": image,
            },
        )
        fake.machine.sandboxes[sandbox_id] = self.machine
        self.commands = FakeCommands(self)
        self.files = FakeFiles(self)

    def machine_sandbox(self) -> FakeSandbox:
        if self.state == "killed":
            raise e2b.exceptions.SandboxNotRunningException(f"{self.sandbox_id} was killed")
        return self.machine

    def get_info(self, **opts) -> FakeInfo:
        return FakeInfo(self)


class FakePaginator:
    def __init__(self, items: list[FakeInfo]) -> None:
        self._items = items
        self.has_next = True

    def next_items(self, **opts) -> list[FakeInfo]:
        self.has_next = False
        return self._items


class _FakeSandboxAPI:
    """`e2b.Sandbox` used class-side, as the backend does (by sandbox id)."""

    def __init__(self, fake: FakeE2B) -> None:
        self._fake = fake

    def create(self, *args, **kwargs) -> FakeE2BSandbox:
        _bind(e2b.Sandbox.create, args, kwargs)
        fake = self._fake
        fake.record("Sandbox.create", **kwargs)
        fake.maybe_fail("Sandbox.create")
        template = kwargs.get("template")
        if template not in fake.templates and template not in fake.machine.images:
            raise e2b.exceptions.NotFoundException(f"template '{template}' not found")
        sandbox = FakeE2BSandbox(
            fake, fake.machine._new_id("e2b"), kwargs, fake.machine.images.get(template)
        )
        fake.sandboxes[sandbox.sandbox_id] = sandbox
        return sandbox

    def _get(self, sandbox_id: str) -> FakeE2BSandbox:
        sandbox = self._fake.sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.state == "killed":
            raise e2b.exceptions.SandboxNotFoundException(f"sandbox {sandbox_id} not found")
        return sandbox

    def connect(self, sandbox_id: str, *args, **kwargs) -> FakeE2BSandbox:
        self._fake.record("Sandbox.connect", sandbox_id=sandbox_id, **kwargs)
        sandbox = self._get(sandbox_id)
        sandbox.state = "running"
        return sandbox

    def kill(self, sandbox_id: str, **opts) -> bool:
        self._fake.record("Sandbox.kill", sandbox_id=sandbox_id, **opts)
        self._fake.maybe_fail("Sandbox.kill")
        sandbox = self._fake.sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.state == "killed":
            return False
        sandbox.state = "killed"
        sandbox.machine.terminate()
        return True

    def pause(self, sandbox_id: str, *args, **kwargs) -> bool:
        self._fake.record("Sandbox.pause", sandbox_id=sandbox_id, **kwargs)
        self._get(sandbox_id).state = "paused"
        return True

    def list(self, *args, **kwargs) -> FakePaginator:
        _bind(e2b.Sandbox.list, args, kwargs)
        self._fake.record("Sandbox.list", **kwargs)
        self._fake.maybe_fail("Sandbox.list")
        query = kwargs.get("query")
        want = (query.metadata if query else None) or {}
        return FakePaginator(
            [
                FakeInfo(sb)
                for sb in self._fake.sandboxes.values()
                if sb.state != "killed" and all(sb.metadata.get(k) == v for k, v in want.items())
            ]
        )

    def create_snapshot(self, sandbox_id: str, *args, **kwargs):
        self._fake.record("Sandbox.create_snapshot", sandbox_id=sandbox_id, **kwargs)
        self._fake.maybe_fail("Sandbox.create_snapshot")
        image = self._get(sandbox_id).machine.snapshot_filesystem()
        self._fake.snapshot_ids.add(image.object_id)
        return e2b.SnapshotInfo(snapshot_id=image.object_id, names=[])

    def delete_snapshot(self, snapshot_id: str, **opts) -> bool:
        self._fake.record("Sandbox.delete_snapshot", snapshot_id=snapshot_id, **opts)
        return self._fake.machine.images.pop(snapshot_id, None) is not None


class _FakeTemplateAPI:
    """`e2b.Template`: `Template()` starts a definition; `exists` / `build` work by name."""

    def __init__(self, fake: FakeE2B) -> None:
        self._fake = fake

    def __call__(self):
        return self

    def from_image(self, image: str) -> dict:
        return {"from_image": image}

    def exists(self, name: str, **opts) -> bool:
        _bind(e2b.Template.exists, (name,), opts)
        self._fake.record("Template.exists", name=name)
        return name in self._fake.templates

    def build(self, template, name=None, **kwargs):
        _bind(e2b.Template.build, (template, name), kwargs)
        self._fake.record("Template.build", template=template, name=name, **kwargs)
        self._fake.maybe_fail("Template.build")
        self._fake.templates[name] = template
        return {"name": name}


class FakeE2B:
    """The `e2b` module as far as the backend uses it, on FakeModal's local sandboxes."""

    exceptions = e2b.exceptions
    CommandExitException = e2b.CommandExitException
    SandboxQuery = e2b.SandboxQuery
    ALL_TRAFFIC = e2b.ALL_TRAFFIC

    def __init__(self, root: Path | None = None) -> None:
        self.machine = FakeModal(root)
        self.app = FakeApp("e2b", "ap-e2b")
        self.templates: dict[str, object] = {"base": {"from_image": "e2bdev/base"}}
        self.sandboxes: dict[str, FakeE2BSandbox] = {}
        self.snapshot_ids: set[str] = set()  # every snapshot made, deleted ones included
        self.calls: list[tuple[str, dict]] = []
        self._failures: dict[str, list[BaseException]] = {}
        self._lock = threading.Lock()
        self.Sandbox = _FakeSandboxAPI(self)
        self.Template = _FakeTemplateAPI(self)

    def record(self, call: str, **kwargs) -> None:
        with self._lock:
            self.calls.append((call, kwargs))

    def called(self, call: str) -> list[dict]:
        return [kwargs for name, kwargs in self.calls if name == call]

    def fail_next(self, call: str, error: BaseException, *, times: int = 1) -> None:
        self._failures.setdefault(call, []).extend([error] * times)

    def maybe_fail(self, call: str) -> None:
        pending = self._failures.get(call)
        if pending:
            raise pending.pop(0)

    def running(self) -> list[FakeE2BSandbox]:
        return [sb for sb in self.sandboxes.values() if sb.state != "killed"]

    def close(self) -> None:
        self._failures.clear()
        self.machine.close()


@contextlib.contextmanager
def e2b_fake_backend(root: Path | None = None, **backend_kwargs):
    """An E2BBackend wired to a FakeE2B; everything it made is gone afterwards."""
    from sandboxes.backends.e2b import E2BBackend

    fake = FakeE2B(root)
    backend_kwargs.setdefault("api_key", "e2b_fake_key")
    backend = E2BBackend(sdk=fake, **backend_kwargs)
    backend.fake = fake
    try:
        yield backend
    finally:
        fake.close()
