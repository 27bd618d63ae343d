"""The sandbox backend interface: one small class per engine, optional features as flags.

Callers test `backend.capabilities`, never backend names. Every method that talks to an
engine raises SandboxError (transient=True when retrying may help); a non-zero exit code is
a result, never an exception.
"""

from __future__ import annotations

import contextlib
import enum
import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field


class Capability(enum.Flag):
    NONE = 0
    STREAMED_EXEC = enum.auto()
    SNAPSHOT = enum.auto()  # filesystem snapshot + create-from-snapshot
    FORK = enum.auto()  # fork N from a snapshot natively (else snapshot + N creates)
    CHECKPOINT = enum.auto()  # memory checkpoint/restore
    PAUSE = enum.auto()
    GPU = enum.auto()
    NETWORK_ALLOWLIST = enum.auto()
    READONLY_FILES = enum.auto()  # the engine enforces /convoy/files read-only (root included)
    # Honours SandboxSpec.egress_socket: no network but a relay to Convoy's egress proxy.
    EGRESS_PROXY = enum.auto()
    # Honours SandboxSpec.image_root (a campaign image as `/`) and tools_home (/convoy/home).
    IMAGES = enum.auto()
    # Builds a campaign image itself from SandboxSpec.image_spec (in the provider's cloud) and
    # makes the tools area (/convoy/home) with SandboxSpec.tools_home.
    IMAGE_SPEC = enum.auto()
    # A simulation (sandboxes/backends/sim.py): nothing runs; checkouts ask it for a commit.
    SIMULATED = enum.auto()


class SandboxError(Exception):
    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class NotSupported(SandboxError):
    """The backend does not declare the capability this call needs."""


FILES_DIR = "/convoy/files"  # where every sandbox sees its spec's files, read-only


class NetworkPolicy(enum.StrEnum):
    NONE = "none"
    OPEN = "open"
    ALLOWLIST = "allowlist"


@dataclass(frozen=True)
class SandboxSpec:
    image: str = "debian:bookworm-slim"  # a registry image on Modal; local backends use the host's
    cpu: float = 1.0
    memory_mb: int = 1024
    gpu: str | None = None
    timeout_s: int = 3600  # wall clock for the sandbox's whole life
    idle_timeout_s: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/workspace"
    network: NetworkPolicy = NetworkPolicy.NONE
    allowed_domains: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    pids_max: int = 256
    disk_mb: int = 2048
    # Name → content, mounted read-only at /convoy/files/<name> ($CONVOY_FILES points there).
    files: Mapping[str, bytes] = field(default_factory=dict)
    # Host path of this sandbox's UNIX socket to Convoy's egress proxy, opened by the caller
    # (`EgressProxy.sandbox_open`). Engines with Capability.EGRESS_PROXY keep the network
    # closed and run a relay on 127.0.0.1:3128 to it, with the proxy variables set.
    egress_socket: str | None = None
    # Extra environment for egress (the package clients' variables); set only with the socket.
    egress_env: Mapping[str, str] = field(default_factory=dict)
    # Host files the egress environment names (CA bundles), bound read-only at the same path.
    egress_files: Sequence[str] = ()
    # With network ALLOWLIST: also the package indexes this host uses (the services layer turns
    # them into names, or into the egress proxy's rules); bytes both ways through the proxy.
    package_indexes: bool = False
    egress_mb: int = 1024
    # A campaign image (sandboxes/images, docs/images.md): the host path of its read-only root
    # filesystem, which local engines mount as `/` instead of the host's /usr; its key (kept on
    # the sandbox's row) and its variables (PATH with the image's tools first). None: host /usr.
    image_root: str | None = None
    image_key: str = ""
    image_env: Mapping[str, str] = field(default_factory=dict)
    # The tools area: /convoy/home ($HOME), writable, carried by snapshots and forks, never in
    # the diff (it lives at /workspace/.convoy-home, which the checkout's git excludes).
    tools_home: bool = False
    # A campaign image for engines with Capability.IMAGE_SPEC: the normalised `image:` value
    # (re-parsable by sandboxes.images.spec), with image_key naming it; the engine builds it.
    # For an OCI image behind a login, `user:password` (never stored, never shown).
    image_spec: Mapping[str, object] | None = None
    image_credentials: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, content in self.files.items():
            if not isinstance(name, str) or not name or name in (".", ".."):
                raise SandboxError(f"files: {name!r} is not a file name")
            if "/" in name or "\0" in name:
                raise SandboxError(f"files: {name!r} must be a plain file name (no '/')")
            if not isinstance(content, bytes):
                raise SandboxError(f"files: {name!r} must be bytes, got {type(content).__name__}")
        if (self.egress_env or self.egress_files) and not self.egress_socket:
            raise SandboxError("egress_env and egress_files need an egress_socket")
        if self.image_root is not None and not (self.image_root.startswith("/") and self.image_key):
            raise SandboxError("image_root must be an absolute host path, with its image_key")
        if self.image_spec is not None and not self.image_key:
            raise SandboxError("image_spec needs its image_key")
        for path in self.egress_files:
            if not path.startswith("/") or path.startswith(("/workspace", "/convoy", "/tmp")):  # noqa: S108
                raise SandboxError(f"egress_files: {path!r} must be an absolute host path")


@dataclass(frozen=True)
class SandboxHandle:
    """What a backend returns from create/attach: enough to find the sandbox again."""

    backend: str
    external_id: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecOutput:
    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    timed_out: bool = False
    truncated: bool = False
    duration_ms: int = 0
    bytes_out: int = 0
    # Which of the sandbox's limits the command ran into, for the log's one clear line:
    # "process limit reached (pids_max=256)", "memory limit reached (memory_mb=1024)",
    # "disk limit reached (disk_mb=2048)"; None when none was seen (or the engine can't tell).
    limit_hit: str | None = None


@dataclass(frozen=True)
class SnapshotHandle:
    backend: str
    external_id: str


ExecEvent = ExecOutput | ExecResult


class SandboxBackend(ABC):
    """One engine. Instances are cheap and stateless; the engine holds the state."""

    name: str = ""
    capabilities: Capability = Capability.STREAMED_EXEC
    unsafe: bool = False  # True only for the development `process` backend
    isolation: str = ""  # shown in the UI, e.g. "gVisor user-space kernel; host /usr read-only"

    @abstractmethod
    def create(self, spec: SandboxSpec) -> SandboxHandle: ...

    @abstractmethod
    def attach(self, external_id: str) -> SandboxHandle: ...

    @abstractmethod
    def list(self, labels: Mapping[str, str]) -> list[SandboxHandle]: ...

    @abstractmethod
    def write_file(
        self, handle: SandboxHandle, path: str, data: bytes, mode: int = 0o644
    ) -> None: ...

    @abstractmethod
    def read_file(self, handle: SandboxHandle, path: str) -> bytes: ...

    @abstractmethod
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
        """Yield ExecOutput events in the order produced, then exactly one ExecResult.

        `last`: the caller runs nothing more in this sandbox before terminating it, so
        processes the command leaves behind need not outlive it. An engine may then run it
        as the sandbox's main process (gVisor does); a later exec still works."""

    @abstractmethod
    def terminate(self, handle: SandboxHandle) -> None:
        """Stop everything and free the workspace; a second call is a no-op."""

    # --- optional capabilities ----------------------------------------------------------------
    def snapshot(self, handle: SandboxHandle) -> SnapshotHandle:
        raise NotSupported(f"{self.name} cannot snapshot")

    def create_from_snapshot(self, snapshot: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        raise NotSupported(f"{self.name} cannot create from a snapshot")

    def fork(self, snapshot: SnapshotHandle, spec: SandboxSpec, count: int) -> list[SandboxHandle]:
        """Default fork: N creates from the snapshot; a partial fork is terminated, not leaked."""
        if Capability.SNAPSHOT not in self.capabilities:
            raise NotSupported(f"{self.name} cannot fork")
        made: list[SandboxHandle] = []
        try:
            for _ in range(count):
                made.append(self.create_from_snapshot(snapshot, spec))
        except BaseException:
            for handle in made:
                with contextlib.suppress(SandboxError):  # else the reaper finds it by label
                    self.terminate(handle)
            raise
        return made

    def delete_snapshot(self, snapshot: SnapshotHandle) -> None:
        raise NotSupported(f"{self.name} has no snapshots")

    def checkpoint(self, handle: SandboxHandle) -> SnapshotHandle:
        raise NotSupported(f"{self.name} cannot checkpoint memory")

    def restore(self, checkpoint: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        raise NotSupported(f"{self.name} cannot restore a checkpoint")

    @staticmethod
    def shell_join(argv: Sequence[str]) -> str:
        """For providers that take one shell string."""
        return shlex.join(argv)
