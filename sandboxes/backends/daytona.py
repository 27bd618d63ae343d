"""The Daytona backend: sandboxes in Daytona's cloud through the `daytona` SDK (synchronous API).

Daytona builds (and caches) a snapshot from the spec's registry image itself, or from a campaign
image declared as a `daytona.Image` (sandboxes/images/cloud_image.py). Commands run in
a session so that their output streams; a filesystem snapshot is a named Daytona snapshot and
a fork is N creates from it. Sandboxes are ephemeral (deleted when they stop) and carry a TTL,
and Convoy's labels are Daytona labels, by which the reaper lists and deletes orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import re
import secrets
import shlex
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from core.errors import Invalid
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
    gpu_parse,
    is_network,
    labels_stamped,
    workspace_path,
)
from sandboxes.backends.images import HOME_DIR
from sandboxes.images.cloud_image import daytona_image_from_spec
from sandboxes.images.spec import image_spec_parse

CREATE_TIMEOUT_S = 600  # the first create from an image builds Daytona's snapshot of it
SNAPSHOT_TIMEOUT_S = 600
FORK_CONCURRENCY = 4
EXIT_CODE_WAIT_S = 10.0  # the exit code can lag the end of the log stream
GONE_STATES = {"destroyed", "destroying", "error", "build_failed"}
# The image's user may not be root: then the workspace is made with sudo, open to that user.
PREPARE = (
    f"mkdir -p {WORKSPACE} 2>/dev/null || "
    f'sudo -n sh -c "mkdir -p {WORKSPACE} && chmod 777 {WORKSPACE}"'
)
HOME_MAKE = (
    f"mkdir -p {HOME_DIR} 2>/dev/null || "
    f'sudo -n sh -c "mkdir -p {HOME_DIR} && chmod 777 {HOME_DIR}"'
)


def _state(sb) -> str:
    state = getattr(sb, "state", None)
    return str(getattr(state, "value", state) or "")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def env_text(env: Mapping[str, str]) -> str:
    """`export NAME='value'` lines for a shell to read (names checked, values quoted)."""
    bad = [k for k in env if not _ENV_NAME.match(k)]
    if bad:
        raise SandboxError(f"not an environment variable name: {bad[0]!r}")
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


class DaytonaBackend(SandboxBackend):
    name = "daytona"
    capabilities = (
        Capability.STREAMED_EXEC
        | Capability.SNAPSHOT
        | Capability.GPU
        | Capability.NETWORK_ALLOWLIST
        | Capability.IMAGE_SPEC
    )
    isolation = (
        "Daytona cloud sandbox (container or microVM by sandbox class); the spec's image or "
        "campaign image"
    )
    # Operator settings or environment, never in a sandbox; the URL and target are optional.
    credentials = ("DAYTONA_API_KEY", "DAYTONA_API_URL", "DAYTONA_TARGET")

    @classmethod
    def configured(cls) -> bool:
        return bool(credential("DAYTONA_API_KEY"))

    def __init__(
        self,
        *,
        sdk=None,
        api_key: str | None = None,
        api_url: str | None = None,
        target: str | None = None,
        fork_concurrency: int = FORK_CONCURRENCY,
    ) -> None:
        # `sdk` is the `daytona` module; tests pass a fake with the same surface. Credentials
        # default to the DAYTONA_API_KEY / DAYTONA_API_URL / DAYTONA_TARGET settings (or
        # environment variables); the API URL and target may stay unset (Daytona's defaults).
        self._sdk = sdk
        self._api_key = api_key if api_key is not None else credential("DAYTONA_API_KEY")
        self._api_url = api_url if api_url is not None else credential("DAYTONA_API_URL")
        self._target = target if target is not None else credential("DAYTONA_TARGET")
        self._fork_concurrency = fork_concurrency
        self._client = None
        self._sandboxes: dict[str, object] = {}

    # --- plumbing -------------------------------------------------------------------------------
    @property
    def sdk(self):
        if self._sdk is None:
            import daytona  # imported on first use: only Daytona users need it

            self._sdk = daytona
        return self._sdk

    def _daytona(self):
        if self._client is None:
            if not self._api_key:
                raise SandboxError("Daytona is not configured: set DAYTONA_API_KEY")
            config = self.sdk.DaytonaConfig(
                api_key=self._api_key, api_url=self._api_url or None, target=self._target or None
            )
            with self._errors("connect"):
                self._client = self.sdk.Daytona(config)
        return self._client

    @contextmanager
    def _errors(self, action: str):
        """Turn Daytona's exceptions into SandboxError, transient when retrying may help."""
        sdk = self.sdk
        transient = (
            sdk.DaytonaRateLimitError,
            sdk.DaytonaTimeoutError,
            sdk.DaytonaConnectionError,
            sdk.DaytonaServiceUnavailableError,
            sdk.DaytonaBadGatewayError,
            sdk.DaytonaInternalServerError,
            ConnectionError,
            TimeoutError,
        )
        try:
            yield
        except SandboxError:
            raise
        except (sdk.DaytonaAuthenticationError, sdk.DaytonaForbiddenError) as error:
            raise SandboxError(
                f"Daytona {action} refused: check DAYTONA_API_KEY/DAYTONA_API_URL ({error})"
            ) from error
        except transient as error:
            raise SandboxError(f"Daytona {action} failed: {error}", transient=True) from error
        except sdk.DaytonaNotFoundError as error:
            raise SandboxError(f"Daytona {action}: not found ({error})") from error
        except sdk.DaytonaError as error:
            raise SandboxError(f"Daytona {action} failed: {error}") from error

    def _sandbox(self, handle: SandboxHandle):
        sb = self._sandboxes.get(handle.external_id)
        if sb is None:
            with self._errors("attach"):
                sb = self._daytona().get(handle.external_id)
            self._sandboxes[handle.external_id] = sb
        return sb

    def _run(self, sb, argv: Sequence[str] | str) -> int:
        """A short helper command (not streamed); its exit code."""
        command = argv if isinstance(argv, str) else shlex.join(argv)
        return int(sb.process.exec(command, timeout=60).exit_code or 0)

    # --- spec → Daytona ---------------------------------------------------------------------------
    def _resources(self, spec: SandboxSpec):
        kwargs = {
            "cpu": max(1, math.ceil(spec.cpu)),
            "memory": max(1, math.ceil(spec.memory_mb / 1024)),  # GiB
            "disk": max(1, math.ceil(spec.disk_mb / 1024)),  # GiB
        }
        gpu = getattr(spec, "gpu", None)
        if gpu:
            kind, count = gpu_parse(gpu)
            offered = {t.value.upper(): t for t in self.sdk.GpuType if "unknown" not in t.value}
            if kind.upper() not in offered:
                names = ", ".join(sorted(offered))
                raise SandboxError(
                    f"gpu: daytona offers {names}, not {kind}; pick one of those or use the modal "
                    "backend"
                )
            kwargs.update(gpu=count, gpu_type=offered[kind.upper()])
        return self.sdk.Resources(**kwargs)

    def _network(self, spec: SandboxSpec) -> dict:
        if spec.network == NetworkPolicy.OPEN:
            return {}
        if spec.network == NetworkPolicy.NONE or not spec.allowed_domains:
            return {"network_block_all": True}
        domains, networks = [], []
        for host, port in allowlist_parse(spec.allowed_domains):
            if is_network(host):
                if ":" in host:
                    raise SandboxError(
                        f"daytona cannot enforce the allowlist entry {host}: its network "
                        "allowlist takes IPv4 ranges only; use network: none or the modal/local "
                        "backends"
                    )
                networks.append(host if "/" in host else f"{host}/32")
            elif port is not None and port not in (80, 443):
                raise SandboxError(
                    f"daytona cannot enforce the allowlist entry {host}:{port}: its domain "
                    "allowlist has no ports; use network: none or the modal/local backends"
                )
            else:
                domains.append(host)
        kwargs: dict = {}
        if domains:
            kwargs["domain_allow_list"] = ",".join(sorted(set(domains)))
        if networks:
            kwargs["network_allow_list"] = ",".join(sorted(set(networks)))
        return kwargs

    def _base_kwargs(self, spec: SandboxSpec) -> dict:
        env = {**spec.env, **({"CONVOY_FILES": FILES_DIR} if spec.files else {})}
        return {
            "env_vars": env or None,
            "labels": labels_stamped(spec.labels),
            # Wall clock since creation, whatever the state: Daytona destroys it after that.
            "ttl_minutes": max(1, math.ceil(spec.timeout_s / 60)),
            # 0 turns Daytona's 15-minute auto-stop off when the spec names no idle limit.
            "auto_stop_interval": math.ceil(spec.idle_timeout_s / 60) if spec.idle_timeout_s else 0,
            "ephemeral": True,  # deleted as soon as it stops: a stopped sandbox is no orphan
            **self._network(spec),
        }

    # --- lifecycle --------------------------------------------------------------------------------
    def create(self, spec: SandboxSpec) -> SandboxHandle:
        image = self._spec_image(spec) if spec.image_spec is not None else spec.image
        params = self.sdk.CreateSandboxFromImageParams(
            image=image, resources=self._resources(spec), **self._base_kwargs(spec)
        )
        return self._create(spec, params)

    def _spec_image(self, spec: SandboxSpec):
        """The campaign image as a `daytona.Image`: Daytona builds it at the first create and
        reuses the build for 24 hours."""
        if spec.image_credentials:
            raise SandboxError(
                "image.credentials_secret: Daytona pulls private images with the registries "
                "set up in Daytona itself; remove credentials_secret and add the registry "
                "there, or use the modal or local backends"
            )
        try:
            image_spec = image_spec_parse(dict(spec.image_spec or {}))
        except Invalid as exc:  # the campaign spec was checked: a stale or altered spec
            raise SandboxError(f"{exc.field or 'image'}: {exc.message}") from exc
        return daytona_image_from_spec(image_spec, image_api=self.sdk.Image)

    def _create(self, spec: SandboxSpec, params, *, from_snapshot: bool = False) -> SandboxHandle:
        client = self._daytona()
        with self._errors("create"):
            sb = client.create(params, timeout=CREATE_TIMEOUT_S)
        self._sandboxes[sb.id] = sb
        handle = SandboxHandle(backend=self.name, external_id=sb.id, labels=dict(spec.labels))
        try:
            with self._errors("prepare"):
                if self._run(sb, PREPARE) != 0:
                    raise SandboxError(f"cannot make {WORKSPACE}")
                if spec.files or from_snapshot:
                    self._files_put(sb, spec.files, from_snapshot=from_snapshot)
                # The tools area ($HOME of every step); a snapshot carries it.
                if spec.tools_home and not from_snapshot and self._run(sb, HOME_MAKE) != 0:
                    raise SandboxError(f"cannot make {HOME_DIR}")
        except BaseException:
            with contextlib.suppress(SandboxError):  # else the reaper finds it by label
                self.terminate(handle)
            raise
        return handle

    def _files_put(self, sb, files: Mapping[str, bytes], *, from_snapshot: bool) -> None:
        """The spec's files at /convoy/files, read-only by their mode bits only (no
        Capability.READONLY_FILES: commands may run as root)."""
        if from_snapshot:  # the snapshot has the source sandbox's files: start from none
            self._run(sb, ["sh", "-c", FILES_CLEAR, FILES_DIR])
        if not files:
            return
        for name, content in files.items():
            sb.fs.upload_file(content, f"{FILES_DIR}/{name}")
        paths = [f"{FILES_DIR}/{name}" for name in files]
        if self._run(sb, ["sh", "-c", FILES_SEAL, FILES_DIR, *paths]) != 0:
            raise SandboxError(f"cannot make {FILES_DIR} read-only")

    def attach(self, external_id: str) -> SandboxHandle:
        with self._errors("attach"):
            sb = self._daytona().get(external_id)
        if _state(sb) in GONE_STATES:
            raise SandboxError(f"Daytona sandbox {external_id} has finished ({_state(sb)})")
        self._sandboxes[external_id] = sb
        return SandboxHandle(backend=self.name, external_id=external_id, labels=dict(sb.labels))

    def list(self, labels: Mapping[str, str]) -> list[SandboxHandle]:
        """Sandboxes that carry at least these labels and are not gone (for reaping)."""
        query = self.sdk.ListSandboxesQuery(labels=dict(labels) or None)
        with self._errors("list"):
            return [
                SandboxHandle(backend=self.name, external_id=sb.id, labels=dict(sb.labels or {}))
                for sb in self._daytona().list(query)
                if _state(sb) not in GONE_STATES
            ]

    def terminate(self, handle: SandboxHandle) -> None:
        try:
            sb = self._sandbox(handle)
        except SandboxError as error:
            if isinstance(error.__cause__, self.sdk.DaytonaNotFoundError):
                return  # already gone
            raise
        if _state(sb) not in GONE_STATES:
            # Deleted meanwhile (by its TTL, or another worker's reaper) is deleted.
            gone = self.sdk.DaytonaNotFoundError
            with self._errors("terminate"), contextlib.suppress(gone):
                sb.delete()
        self._sandboxes.pop(handle.external_id, None)

    # --- files ------------------------------------------------------------------------------------
    def write_file(self, handle: SandboxHandle, path: str, data: bytes, mode: int = 0o644) -> None:
        sb = self._sandbox(handle)
        remote = workspace_path(path)
        with self._errors(f"write {remote}"):
            sb.fs.upload_file(data, remote)
            if mode != 0o644 and self._run(sb, ["chmod", format(mode, "o"), remote]) != 0:
                raise SandboxError(f"cannot set mode {mode:o} on {remote}")

    def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        sb = self._sandbox(handle)
        remote = workspace_path(path)
        with self._errors(f"read {remote}"):
            return bytes(sb.fs.download_file(remote))

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
        last: bool = False,  # the sandbox already runs; an exec costs the same either way
    ) -> Iterator[ExecEvent]:
        if not argv:
            raise SandboxError("exec needs a command")
        sb = self._sandbox(handle)
        started = time.monotonic()
        exec_id = secrets.token_hex(8)
        session = f"convoy-{exec_id}"
        # A session command takes one shell line: no cwd or env of its own. The line sets the
        # directory; the environment (secrets among it) goes in a file the line reads and
        # removes, never in the line, which Daytona keeps as the command's record.
        env_file = f"/tmp/.convoy-env-{exec_id}"  # noqa: S108 - the sandbox's own /tmp
        line = f"cd {shlex.quote(workspace_path(cwd or '.'))} && exec " + shlex.join(
            ["sh", "-c", EXEC_WRAPPER, exec_id, *argv]
        )
        with self._errors("exec"):
            if env:
                sb.fs.upload_file(env_text(env).encode(), env_file)
                line = f". {env_file}; read_env=$?; rm -f {env_file}; [ $read_env = 0 ] && {line}"
            sb.process.create_session(session)
            started_cmd = sb.process.execute_session_command(
                session, self.sdk.SessionExecuteRequest(command=line, run_async=True)
            )
        command_id = started_cmd.cmd_id
        items: queue.Queue = queue.Queue()

        def pump() -> None:
            try:
                asyncio.run(
                    sb.process.get_session_command_logs_async(
                        session,
                        command_id,
                        lambda text: items.put(("stdout", text.encode())),
                        lambda text: items.put(("stderr", text.encode())),
                    )
                )
                deadline = time.monotonic() + EXIT_CODE_WAIT_S
                status = sb.process.get_session_command
                while (code := status(session, command_id).exit_code) is None:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)  # the session API has no wait; this is its documented poll
                items.put(("exit", code))
            except Exception as error:
                items.put(("error", error))

        threading.Thread(target=pump, daemon=True, name="daytona-exec").start()

        def kill() -> None:
            with contextlib.suppress(Exception):
                self._run(sb, ["sh", "-c", EXEC_KILL_TREE, exec_id])

        def fail(error: BaseException) -> None:
            with self._errors("exec output"):
                raise error

        def cleanup() -> None:
            sb.process.delete_session(session)

        yield from exec_stream(
            items,
            kill=kill,
            fail=fail,
            timeout_s=timeout_s,
            output_cap=output_cap,
            started=started,
            cleanup=cleanup,
        )

    # --- snapshots and forks ----------------------------------------------------------------------
    def snapshot(self, handle: SandboxHandle) -> SnapshotHandle:
        """A named Daytona snapshot of the sandbox's filesystem (not its memory)."""
        sb = self._sandbox(handle)
        name = f"convoy-{handle.external_id[:12]}-{secrets.token_hex(4)}"
        with self._errors("snapshot"):
            sb.create_snapshot(name, timeout=SNAPSHOT_TIMEOUT_S)
        return SnapshotHandle(backend=self.name, external_id=name)

    def create_from_snapshot(self, snapshot: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        """Resources come with the snapshot (Daytona takes none for a create from one)."""
        self._resources(spec)  # still refuse a GPU Daytona does not offer
        params = self.sdk.CreateSandboxFromSnapshotParams(
            snapshot=snapshot.external_id, **self._base_kwargs(spec)
        )
        return self._create(spec, params, from_snapshot=True)

    def fork(self, snapshot: SnapshotHandle, spec: SandboxSpec, count: int) -> list[SandboxHandle]:
        """N creates from the snapshot, a few at a time; all or none survive.

        Not Daytona's `Sandbox.fork()`: that clones a live sandbox as it is now (one per call),
        while a Convoy fork starts from the state the snapshot recorded."""
        self._resources(spec)
        self._network(spec)
        return fork_parallel(
            lambda: self.create_from_snapshot(snapshot, spec),
            count=count,
            concurrency=self._fork_concurrency,
            terminate=self.terminate,
            name=self.name,
        )

    def delete_snapshot(self, snapshot: SnapshotHandle) -> None:
        gone = self.sdk.DaytonaNotFoundError
        with self._errors("delete snapshot"), contextlib.suppress(gone):
            self._daytona().snapshot.delete(snapshot.external_id)
