"""The E2B backend: Firecracker microVMs in E2B's cloud through the `e2b` SDK (synchronous API).

The spec's image becomes an E2B template built once per (image, cpu, memory) — E2B fixes CPU
and memory in the template, not per sandbox. Snapshots are E2B's `create_snapshot` (memory and
filesystem), so they double as memory checkpoints; a fork is N creates from one. Convoy's
labels travel as E2B metadata, by which the reaper lists and kills orphans.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from sandboxes.backends.base import (
    FILES_DIR,
    Capability,
    ExecEvent,
    NetworkPolicy,
    SandboxBackend,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SnapshotHandle,
)
from sandboxes.backends.cloud import (
    EXEC_KILL_TREE,
    EXEC_WRAPPER,
    FILES_CLEAR,
    FILES_SEAL,
    WORKSPACE,
    allowlist_parse,
    credential,
    exec_stream,
    fork_parallel,
    labels_stamped,
    workspace_path,
)

MAX_TIMEOUT_S = 24 * 3600  # E2B Pro's longest sandbox life (Hobby: 1 h, refused by E2B)
FORK_CONCURRENCY = 4
USER = "root"  # as on Modal: commands may write anywhere the spec's image lets root write
DOMAIN_PORTS = (80, 443)  # E2B filters domains by Host (80) and TLS SNI (443) only
STREAM_BACKSTOP_S = 60  # E2B's own stream limit, past our deadline, if our kill is lost


class E2BBackend(SandboxBackend):
    name = "e2b"
    capabilities = (
        Capability.STREAMED_EXEC
        | Capability.SNAPSHOT
        | Capability.CHECKPOINT
        | Capability.PAUSE
        | Capability.NETWORK_ALLOWLIST
    )
    isolation = "E2B Firecracker microVM; an E2B template built from the spec's image"
    credentials = ("E2B_API_KEY",)  # operator settings or environment; never in a sandbox

    @classmethod
    def configured(cls) -> bool:
        return bool(credential("E2B_API_KEY"))

    def __init__(
        self,
        *,
        sdk=None,
        api_key: str | None = None,
        templates: Mapping[str, str] | None = None,
        fork_concurrency: int = FORK_CONCURRENCY,
    ) -> None:
        # `sdk` is the `e2b` module; tests pass a fake with the same surface. `api_key`
        # defaults to the E2B_API_KEY setting (or environment variable). `templates` maps an
        # image reference to an E2B template already built for it (its CPU and memory win).
        self._sdk = sdk
        self._api_key = api_key if api_key is not None else credential("E2B_API_KEY")
        self._templates = dict(templates or {})
        self._fork_concurrency = fork_concurrency
        self._sandboxes: dict[str, object] = {}
        self._built: dict[str, str] = {}  # template key → name known to exist on E2B

    # --- plumbing -------------------------------------------------------------------------------
    @property
    def sdk(self):
        if self._sdk is None:
            import e2b  # imported on first use: only E2B users need it

            self._sdk = e2b
        return self._sdk

    def _opts(self) -> dict:
        if not self._api_key:
            raise SandboxError("E2B is not configured: set E2B_API_KEY")
        return {"api_key": self._api_key}

    @contextmanager
    def _errors(self, action: str):
        """Turn E2B's exceptions into SandboxError, transient when retrying may help."""
        exc = self.sdk.exceptions
        transient = (
            exc.RateLimitException,
            exc.ServiceBusyException,
            exc.SandboxUnreachableException,
            ConnectionError,
            TimeoutError,
        )
        try:
            yield
        except SandboxError:
            raise
        except exc.AuthenticationException as error:
            raise SandboxError(f"E2B {action} refused: check E2B_API_KEY ({error})") from error
        except exc.SandboxNotRunningException as error:
            raise SandboxError(f"E2B {action}: the sandbox has finished ({error})") from error
        except transient as error:
            raise SandboxError(f"E2B {action} failed: {error}", transient=True) from error
        except exc.NotFoundException as error:
            raise SandboxError(f"E2B {action}: not found ({error})") from error
        except exc.TimeoutException as error:
            raise SandboxError(f"E2B {action} timed out: {error}", transient=True) from error
        except (exc.SandboxException, exc.TemplateException, exc.BuildException) as error:
            raise SandboxError(f"E2B {action} failed: {error}") from error

    def _sandbox(self, handle: SandboxHandle):
        sb = self._sandboxes.get(handle.external_id)
        if sb is None:
            with self._errors("connect"):
                sb = self.sdk.Sandbox.connect(handle.external_id, **self._opts())
            self._sandboxes[handle.external_id] = sb
        return sb

    def _run(self, sb, argv: Sequence[str]) -> int:
        """A short helper command; its exit code (E2B raises on a non-zero one)."""
        try:
            sb.commands.run(self.shell_join(argv), user=USER, timeout=60)
        except self.sdk.CommandExitException as error:
            return error.exit_code
        return 0

    # --- spec → E2B -------------------------------------------------------------------------------
    def _refuse(self, spec: SandboxSpec) -> None:
        if getattr(spec, "image_spec", None) is not None:
            # E2B templates are built ahead of time; campaign images are not mapped onto them.
            raise SandboxError(
                "image: the e2b backend cannot run campaign images; use the local (bubblewrap, "
                "gvisor), modal or daytona backends, or build an E2B template and name it"
            )
        gpu = getattr(spec, "gpu", None)
        if gpu:
            raise SandboxError(
                f"the e2b backend offers no GPUs (asked for {gpu}); "
                "use the modal or daytona backend"
            )

    def _network(self, spec: SandboxSpec) -> dict:
        if spec.network == NetworkPolicy.OPEN:
            return {"allow_internet_access": True}
        if spec.network == NetworkPolicy.NONE or not spec.allowed_domains:
            return {"allow_internet_access": False}
        allow = []
        for host, port in allowlist_parse(spec.allowed_domains):
            if port is not None and port not in DOMAIN_PORTS:
                raise SandboxError(
                    f"e2b cannot enforce the allowlist entry {host}:{port}: E2B filters domains "
                    "only on ports 80 and 443; use network: none or the modal/local backends"
                )
            allow.append(host)
        # Default-deny, then the named hosts: E2B checks allow_out before deny_out.
        return {"network": {"deny_out": [self.sdk.ALL_TRAFFIC], "allow_out": sorted(set(allow))}}

    def _template(self, spec: SandboxSpec) -> str:
        """The E2B template for the spec's image and limits, built on first use."""
        if spec.image in self._templates:
            return self._templates[spec.image]
        cpu = max(1, math.ceil(spec.cpu))
        memory = max(512, spec.memory_mb + spec.memory_mb % 2)  # E2B wants an even MiB count
        key = f"{spec.image}|{cpu}|{memory}"
        name = self._built.get(key)
        if name:
            return name
        name = "convoy-" + hashlib.sha256(key.encode()).hexdigest()[:20]
        template_api = self.sdk.Template
        with self._errors(f"template for {spec.image}"):
            if not template_api.exists(name, **self._opts()):
                template_api.build(
                    template_api().from_image(spec.image),
                    name,
                    cpu_count=cpu,
                    memory_mb=memory,
                    **self._opts(),
                )
        self._built[key] = name
        return name

    def _create_kwargs(self, spec: SandboxSpec, template: str) -> dict:
        env = {**spec.env, **({"CONVOY_FILES": FILES_DIR} if spec.files else {})}
        return {
            "template": template,
            "timeout": min(int(spec.timeout_s), MAX_TIMEOUT_S),
            "metadata": labels_stamped(spec.labels),
            "envs": env or None,
            **self._network(spec),
            **self._opts(),
        }

    # --- lifecycle --------------------------------------------------------------------------------
    def create(self, spec: SandboxSpec) -> SandboxHandle:
        self._refuse(spec)
        self._network(spec)  # refuse before building a template for a spec we cannot run
        return self._create(spec, self._template(spec))

    def _create(self, spec: SandboxSpec, template: str, *, from_snapshot: bool = False):
        self._refuse(spec)
        kwargs = self._create_kwargs(spec, template)
        with self._errors("create"):
            sb = self.sdk.Sandbox.create(**kwargs)
        self._sandboxes[sb.sandbox_id] = sb
        handle = SandboxHandle(
            backend=self.name, external_id=sb.sandbox_id, labels=dict(spec.labels)
        )
        try:
            with self._errors("prepare"):
                if self._run(sb, ["mkdir", "-p", WORKSPACE]) != 0:
                    raise SandboxError(f"cannot make {WORKSPACE}")
                if spec.files or from_snapshot:
                    self._files_put(sb, spec.files, from_snapshot=from_snapshot)
        except BaseException:
            with contextlib.suppress(SandboxError):  # else the reaper finds it by metadata
                self.terminate(handle)
            raise
        return handle

    def _files_put(self, sb, files: Mapping[str, bytes], *, from_snapshot: bool) -> None:
        """The spec's files at /convoy/files, read-only by their mode bits only (commands run as
        root, which mode bits do not stop: no Capability.READONLY_FILES)."""
        if from_snapshot:  # the snapshot has the source sandbox's files: start from none
            self._run(sb, ["sh", "-c", FILES_CLEAR, FILES_DIR])
        if not files:
            return
        for name, content in files.items():
            sb.files.write(f"{FILES_DIR}/{name}", content, user=USER)
        paths = [f"{FILES_DIR}/{name}" for name in files]
        if self._run(sb, ["sh", "-c", FILES_SEAL, FILES_DIR, *paths]) != 0:
            raise SandboxError(f"cannot make {FILES_DIR} read-only")

    def attach(self, external_id: str) -> SandboxHandle:
        with self._errors("attach"):
            sb = self.sdk.Sandbox.connect(external_id, **self._opts())  # resumes a paused one
            labels = dict(sb.get_info().metadata or {})
        self._sandboxes[external_id] = sb
        return SandboxHandle(backend=self.name, external_id=external_id, labels=labels)

    def list(self, labels: Mapping[str, str]) -> list[SandboxHandle]:
        """Running and paused sandboxes whose metadata carries these labels (for reaping)."""
        query = self.sdk.SandboxQuery(metadata=dict(labels) or None)
        handles = []
        with self._errors("list"):
            pages = self.sdk.Sandbox.list(query=query, **self._opts())
            while pages.has_next:
                for info in pages.next_items():
                    handles.append(
                        SandboxHandle(
                            backend=self.name,
                            external_id=info.sandbox_id,
                            labels=dict(info.metadata or {}),
                        )
                    )
        return handles

    def terminate(self, handle: SandboxHandle) -> None:
        with self._errors("terminate"):
            self.sdk.Sandbox.kill(handle.external_id, **self._opts())  # False: already gone
        self._sandboxes.pop(handle.external_id, None)

    def pause(self, handle: SandboxHandle) -> None:
        """Memory and filesystem kept by E2B; `resume` (or attach) continues it."""
        with self._errors("pause"):
            self.sdk.Sandbox.pause(handle.external_id, **self._opts())
        self._sandboxes.pop(handle.external_id, None)

    def resume(self, handle: SandboxHandle) -> SandboxHandle:
        return self.attach(handle.external_id)

    # --- files ------------------------------------------------------------------------------------
    def write_file(self, handle: SandboxHandle, path: str, data: bytes, mode: int = 0o644) -> None:
        sb = self._sandbox(handle)
        remote = workspace_path(path)
        with self._errors(f"write {remote}"):
            sb.files.write(remote, data, user=USER)
            if mode != 0o644 and self._run(sb, ["chmod", format(mode, "o"), remote]) != 0:
                raise SandboxError(f"cannot set mode {mode:o} on {remote}")

    def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        sb = self._sandbox(handle)
        remote = workspace_path(path)
        with self._errors(f"read {remote}"):
            return bytes(sb.files.read(remote, format="bytes", user=USER))

    # --- exec ---------------------------------------------------------------------------------
    def exec(
        self,
        handle: SandboxHandle,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        output_cap: int = 10 * 1024 * 1024,
        last: bool = False,  # the microVM already runs; an exec costs the same either way
    ) -> Iterator[ExecEvent]:
        if not argv:
            raise SandboxError("exec needs a command")
        sb = self._sandbox(handle)
        started = time.monotonic()
        exec_id = secrets.token_hex(8)
        with self._errors("exec"):
            command = sb.commands.run(
                self.shell_join(["sh", "-c", EXEC_WRAPPER, exec_id, *argv]),
                background=True,
                envs=dict(env) if env else None,
                user=USER,
                cwd=workspace_path(cwd or "."),
                # Our deadline kills the command; E2B's stream limit is only the backstop.
                timeout=math.ceil(timeout_s) + STREAM_BACKSTOP_S if timeout_s else 0,
                retain_output=False,
            )
        items: queue.Queue = queue.Queue()
        exit_exception = self.sdk.CommandExitException

        def pump() -> None:
            try:
                for stdout, stderr, _ in command:
                    if stdout:
                        items.put(("stdout", stdout.encode()))
                    elif stderr:
                        items.put(("stderr", stderr.encode()))
                try:
                    code = command.wait().exit_code
                except exit_exception as error:  # E2B raises on a non-zero exit: a result here
                    code = error.exit_code
                items.put(("exit", code))
            except Exception as error:
                items.put(("error", error))

        threading.Thread(target=pump, daemon=True, name="e2b-exec").start()

        def kill() -> None:
            with contextlib.suppress(Exception):
                self._run(sb, ["sh", "-c", EXEC_KILL_TREE, exec_id])
            with contextlib.suppress(Exception):
                command.kill()

        def fail(error: BaseException) -> None:
            with self._errors("exec output"):
                raise error

        yield from exec_stream(
            items,
            kill=kill,
            fail=fail,
            timeout_s=timeout_s,
            output_cap=output_cap,
            started=started,
            cleanup=command.disconnect,
        )

    # --- snapshots, checkpoints and forks ---------------------------------------------------------
    def snapshot(self, handle: SandboxHandle) -> SnapshotHandle:
        """E2B's snapshot: the sandbox pauses, memory and filesystem are kept, it resumes."""
        with self._errors("snapshot"):
            info = self.sdk.Sandbox.create_snapshot(handle.external_id, **self._opts())
        return SnapshotHandle(backend=self.name, external_id=info.snapshot_id)

    def create_from_snapshot(self, snapshot: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        return self._create(spec, snapshot.external_id, from_snapshot=True)

    def fork(self, snapshot: SnapshotHandle, spec: SandboxSpec, count: int) -> list[SandboxHandle]:
        """N creates from the snapshot, a few at a time; all or none survive.

        Not E2B's `Sandbox.fork(count=N)`: that forks a live sandbox as it is now, while a
        Convoy fork starts from the state the snapshot recorded."""
        self._refuse(spec)
        self._network(spec)
        return fork_parallel(
            lambda: self.create_from_snapshot(snapshot, spec),
            count=count,
            concurrency=self._fork_concurrency,
            terminate=self.terminate,
            name=self.name,
        )

    def delete_snapshot(self, snapshot: SnapshotHandle) -> None:
        with self._errors("delete snapshot"):
            self.sdk.Sandbox.delete_snapshot(snapshot.external_id, **self._opts())

    def checkpoint(self, handle: SandboxHandle) -> SnapshotHandle:
        """E2B snapshots keep memory: a checkpoint is a snapshot."""
        return self.snapshot(handle)

    def restore(self, checkpoint: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        """A sandbox resumed from the checkpoint, its processes running; the spec's files are
        the checkpoint's (not re-written: restoring must not disturb the running state)."""
        self._refuse(spec)
        kwargs = self._create_kwargs(spec, checkpoint.external_id)
        with self._errors("restore"):
            sb = self.sdk.Sandbox.create(**kwargs)
        self._sandboxes[sb.sandbox_id] = sb
        return SandboxHandle(backend=self.name, external_id=sb.sandbox_id, labels=dict(spec.labels))
