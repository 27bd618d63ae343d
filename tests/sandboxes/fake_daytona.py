"""FakeDaytona: a stand-in for the `daytona` SDK surface the Daytona backend uses (Daytona's
cloud cannot be reached from the test machines).

Every call is checked against the real SDK's signature and recorded in `calls`; parameters are
the real SDK classes (CreateSandboxFromImageParams, Resources, SessionExecuteRequest, …) and
errors the real `daytona` exceptions. The sandboxes are FakeModal's local machinery (a
directory at /workspace, commands as local processes, a snapshot as a copy of the files);
session logs stream through the same async callbacks the SDK calls. A domain or CIDR allowlist
blocks the network entirely here (Daytona would let the named hosts through).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import shlex
import threading
from pathlib import Path

import daytona
import modal.exception
from daytona._sync.daytona import Daytona as RealDaytona
from daytona._sync.filesystem import FileSystem
from daytona._sync.process import Process
from daytona._sync.sandbox import Sandbox as RealSandbox
from daytona_toolbox_api_client import Command

from tests.sandboxes.fake_modal import FakeApp, FakeModal, FakeSandbox


def _bind(real, args: tuple, kwargs: dict) -> None:
    """Refuse a call the real SDK method would refuse (unknown keyword, missing argument)."""
    inspect.signature(real).bind(None, *args, **kwargs)


class FakeCommand:
    def __init__(self, process) -> None:
        self.process = process
        self.exit_code: int | None = None


class FakeProcess:
    def __init__(self, sandbox: FakeDaytonaSandbox) -> None:
        self._sandbox = sandbox
        self.sessions: dict[str, dict[str, FakeCommand]] = {}

    def exec(self, command: str, *args, **kwargs):
        _bind(Process.exec, (command, *args), kwargs)
        self._sandbox.fake.record("process.exec", command=command, **kwargs)
        process = self._sandbox.machine_exec(command, kwargs.get("cwd"), kwargs.get("env"))
        out = process.stdout.read() + process.stderr.read()
        return daytona.ExecuteResponse(
            exit_code=process.wait(), result=out.decode(errors="replace")
        )

    def create_session(self, session_id: str, request_timeout=None) -> None:
        self._sandbox.fake.record("process.create_session", session_id=session_id)
        if session_id in self.sessions:
            raise daytona.DaytonaConflictError(f"session {session_id} exists", status_code=409)
        self.sessions[session_id] = {}

    def execute_session_command(self, session_id: str, req, timeout=None):
        _bind(Process.execute_session_command, (session_id, req), {"timeout": timeout})
        fake = self._sandbox.fake
        fake.record("process.execute_session_command", session_id=session_id, req=req)
        fake.maybe_fail("process.execute_session_command")
        if not isinstance(req, daytona.SessionExecuteRequest):
            raise TypeError("req must be a SessionExecuteRequest")
        if session_id not in self.sessions:
            raise daytona.DaytonaNotFoundError(f"session {session_id} not found", status_code=404)
        command_id = fake.machine._new_id("cmd")
        process = self._sandbox.machine_exec(req.command, None, None)
        self.sessions[session_id][command_id] = FakeCommand(process)
        return daytona.SessionExecuteResponse(cmd_id=command_id)

    async def get_session_command_logs_async(self, session_id, command_id, on_stdout, on_stderr):
        self._sandbox.fake.record(
            "process.get_session_command_logs_async", session_id=session_id, command_id=command_id
        )
        command = self.sessions[session_id][command_id]
        items: queue.Queue = queue.Queue()

        def pump(stream, reader) -> None:
            for chunk in reader:
                items.put((stream, chunk.decode(errors="replace")))
            items.put((stream, None))

        for stream, reader in (
            ("stdout", command.process.stdout),
            ("stderr", command.process.stderr),
        ):
            threading.Thread(target=pump, args=(stream, reader), daemon=True).start()
        open_streams = 2
        while open_streams:
            stream, text = await asyncio.to_thread(items.get)
            if text is None:
                open_streams -= 1
            else:
                (on_stdout if stream == "stdout" else on_stderr)(text)

    def get_session_command(self, session_id: str, command_id: str, request_timeout=None):
        command = self.sessions[session_id][command_id]
        code = command.process.poll()
        return Command(id=command_id, command="", exit_code=code)

    def delete_session(self, session_id: str, request_timeout=None) -> None:
        self._sandbox.fake.record("process.delete_session", session_id=session_id)
        self.sessions.pop(session_id, None)


class FakeFs:
    def __init__(self, sandbox: FakeDaytonaSandbox) -> None:
        self._sandbox = sandbox

    def upload_file(self, file, remote_path: str, timeout: int = 30 * 60) -> None:
        _bind(FileSystem.upload_file, (file, remote_path), {"timeout": timeout})
        self._sandbox.fake.record("fs.upload_file", remote_path=remote_path)
        self._sandbox.machine().filesystem.write_bytes(bytes(file), remote_path)

    def download_file(self, remote_path: str, timeout: int = 30 * 60) -> bytes:
        self._sandbox.fake.record("fs.download_file", remote_path=remote_path)
        try:
            return self._sandbox.machine().filesystem.read_bytes(remote_path)
        except modal.exception.SandboxFilesystemNotFoundError:
            raise daytona.DaytonaFileNotFoundError(
                f"file not found: {remote_path}", status_code=404
            ) from None


def _image_env(image) -> dict[str, str]:
    """The variables a declared `daytona.Image` sets (its Dockerfile's ENV lines), as Daytona
    sets them in a sandbox built from it; nothing for a registry image name."""
    if not isinstance(image, daytona.Image):
        return {}
    env = {}
    for line in image.dockerfile().splitlines():
        if line.startswith("ENV "):
            name, _, value = line[4:].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


class FakeDaytonaSandbox:
    def __init__(self, fake: FakeDaytona, sandbox_id: str, params, image) -> None:
        self.fake = fake
        self.id = sandbox_id
        self.params = params
        self.labels = {"code-toolbox-language": "python", **(params.labels or {})}
        self.state = "started"
        blocked = bool(
            params.network_block_all or params.domain_allow_list or params.network_allow_list
        )
        self._machine = FakeSandbox(
            fake.machine,
            sandbox_id,
            {
                "app": fake.app,
                "workdir": "/workspace",
                "env": {**_image_env(getattr(params, "image", None)), **(params.env_vars or {})},
                "block_network": blocked,
                "image": image,
            },
        )
        fake.machine.sandboxes[sandbox_id] = self._machine
        self.process = FakeProcess(self)
        self.fs = FakeFs(self)

    def machine(self) -> FakeSandbox:
        if self.state != "started":
            raise daytona.DaytonaError(f"sandbox {self.id} is {self.state}", status_code=409)
        return self._machine

    def machine_exec(self, command: str, cwd, env):
        try:
            return self.machine().exec(
                "sh", "-c", command, workdir=cwd or "/workspace", env=env, text=False
            )
        except modal.exception.SandboxTerminatedError as error:
            raise daytona.DaytonaError(str(error)) from None

    def create_snapshot(self, name: str, timeout: float | None = 60) -> None:
        _bind(RealSandbox.create_snapshot, (name,), {"timeout": timeout})
        self.fake.record("Sandbox.create_snapshot", sandbox_id=self.id, name=name, timeout=timeout)
        self.fake.maybe_fail("Sandbox.create_snapshot")
        self.fake.snapshots[name] = self.machine().snapshot_filesystem()

    def delete(self, timeout: float | None = 60, wait: bool = False) -> None:
        self.fake.record("Sandbox.delete", sandbox_id=self.id)
        self.fake.maybe_fail("Sandbox.delete")
        if self.state == "destroyed":
            raise daytona.DaytonaNotFoundError(f"sandbox {self.id} not found", status_code=404)
        self.state = "destroyed"
        self._machine.terminate()


class FakeSnapshotService:
    def __init__(self, fake: FakeDaytona) -> None:
        self._fake = fake

    def delete(self, snapshot) -> None:
        self._fake.record("snapshot.delete", snapshot=snapshot)
        if self._fake.snapshots.pop(snapshot, None) is None:
            raise daytona.DaytonaNotFoundError(f"snapshot {snapshot} not found", status_code=404)


class FakeDaytonaClient:
    def __init__(self, fake: FakeDaytona, config) -> None:
        self._fake = fake
        self.config = config
        self.snapshot = FakeSnapshotService(fake)

    def create(self, params=None, *, timeout: float = 60, on_snapshot_create_logs=None):
        _bind(RealDaytona.create, (params,), {"timeout": timeout})
        fake = self._fake
        fake.record("Daytona.create", params=params, timeout=timeout)
        fake.maybe_fail("Daytona.create")
        image = None
        if isinstance(params, daytona.CreateSandboxFromSnapshotParams):
            image = fake.snapshots.get(params.snapshot)
            if image is None:
                raise daytona.DaytonaNotFoundError(
                    f"snapshot {params.snapshot} not found", status_code=404
                )
        sandbox = FakeDaytonaSandbox(fake, fake.machine._new_id("dt"), params, image)
        fake.sandboxes[sandbox.id] = sandbox
        return sandbox

    def get(self, sandbox_id_or_name: str, request_timeout=None):
        self._fake.record("Daytona.get", sandbox_id=sandbox_id_or_name)
        sandbox = self._fake.sandboxes.get(sandbox_id_or_name)
        if sandbox is None:
            raise daytona.DaytonaNotFoundError(
                f"sandbox {sandbox_id_or_name} not found", status_code=404
            )
        return sandbox

    def list(self, query=None, request_timeout=None):
        _bind(RealDaytona.list, (query,), {"request_timeout": request_timeout})
        self._fake.record("Daytona.list", query=query)
        want = (query.labels if query else None) or {}
        for sandbox in list(self._fake.sandboxes.values()):
            if all(sandbox.labels.get(k) == v for k, v in want.items()):
                yield sandbox  # destroyed ones too, for a while, as Daytona lists them


class FakeDaytona:
    """The `daytona` module as far as the backend uses it, on FakeModal's local sandboxes."""

    def __init__(self, root: Path | None = None) -> None:
        self.machine = FakeModal(root)
        self.app = FakeApp("daytona", "ap-daytona")
        self.sandboxes: dict[str, FakeDaytonaSandbox] = {}
        self.snapshots: dict[str, object] = {}
        self.clients: list[FakeDaytonaClient] = []
        self.calls: list[tuple[str, dict]] = []
        self._failures: dict[str, list[BaseException]] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        # Parameter classes, enums and exceptions are the real SDK's.
        if name[:1].isupper():
            return getattr(daytona, name)
        raise AttributeError(name)

    def Daytona(self, config=None) -> FakeDaytonaClient:
        inspect.signature(RealDaytona.__init__).bind(None, config)
        client = FakeDaytonaClient(self, config)
        self.clients.append(client)
        return client

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

    def running(self) -> list[FakeDaytonaSandbox]:
        return [sb for sb in self.sandboxes.values() if sb.state != "destroyed"]

    def close(self) -> None:
        self._failures.clear()
        self.machine.close()


@contextlib.contextmanager
def daytona_fake_backend(root: Path | None = None, **backend_kwargs):
    """A DaytonaBackend wired to a FakeDaytona; everything it made is gone afterwards."""
    from sandboxes.backends.daytona import DaytonaBackend

    fake = FakeDaytona(root)
    backend_kwargs.setdefault("api_key", "dtn_fake_key")
    backend = DaytonaBackend(sdk=fake, **backend_kwargs)
    backend.fake = fake
    try:
        yield backend
    finally:
        fake.close()
