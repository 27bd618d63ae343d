"""The Backends admin page's read and its one write: what each sandbox backend offers and
enforces, whether its provider credentials are set (never their values), and the audited
connection test that starts a tiny sandbox, runs `echo ok` in it and tears it down.

Provider credentials are the operator's (settings or environment variables of Convoy's own
processes); they reach the provider's SDK in Convoy's process and never enter a sandbox.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from importlib import import_module

from django.conf import settings

from accounts.roles import capability_require
from audit.record import audit_record
from core.errors import NotFound
from sandboxes.backends import BACKENDS, LOCAL_BACKENDS
from sandboxes.backends.base import Capability, ExecOutput, SandboxError, SandboxSpec
from sandboxes.backends.cloud import credential
from sandboxes.services import sandbox_create, sandbox_exec, sandbox_terminate

TEST_TIMEOUT_S = 120  # the test sandbox's whole life; the reaper ends it if we cannot

# Capability flags in words, in the order the page lists them.
CAPABILITY_WORDS = (
    (Capability.STREAMED_EXEC, "streamed exec"),
    (Capability.SNAPSHOT, "filesystem snapshot"),
    (Capability.FORK, "native fork"),
    (Capability.CHECKPOINT, "memory checkpoint"),
    (Capability.PAUSE, "pause/resume"),
    (Capability.GPU, "GPU"),
    (Capability.NETWORK_ALLOWLIST, "domain allowlist"),
    (Capability.EGRESS_PROXY, "egress through Convoy's proxy"),
    (Capability.READONLY_FILES, "read-only spec files"),
    (Capability.IMAGES, "campaign images (built on this host)"),
    (Capability.IMAGE_SPEC, "campaign images (built by the provider)"),
)

# What each backend enforces, in the words of docs/backends.md (kept true there).
ENFORCES = {
    "gvisor": {
        "network": "none, or only Convoy's egress proxy (its allowlist)",
        "limits": "CPU, memory and processes (cgroups), file size, wall clock",
        "fork": "copies of the workspace, or memory checkpoint and restore",
    },
    "bwrap": {
        "network": "none, or only Convoy's egress proxy (its allowlist)",
        "limits": "CPU, memory and processes (cgroups or rlimits), file size, wall clock",
        "fork": "copies of the workspace",
    },
    "modal": {
        "network": "block all, or Modal's outbound domain allowlist",
        "limits": "CPU, memory, GPU, wall clock and idle timeout (Modal)",
        "fork": "filesystem snapshot, then N creates from it",
    },
    "e2b": {
        "network": "deny all, or allow listed hosts on ports 80/443 (others refused)",
        "limits": "CPU and memory by template, wall clock (24 h); no GPUs",
        "fork": "E2B snapshot (memory and files), then N creates from it",
    },
    "daytona": {
        "network": "block all, or Daytona's domain and IPv4 allowlists (no ports)",
        "limits": "CPU, memory, disk, GPU, TTL and auto-stop (Daytona)",
        "fork": "named Daytona snapshot, then N creates from it",
    },
    "process": {
        "network": "NONE: the host's network",
        "limits": "wall clock only",
        "fork": "copies of the workspace",
    },
}


@dataclass(frozen=True)
class BackendStatus:
    name: str
    is_default: bool
    local: bool
    installed: bool
    isolation: str
    capabilities: list[str]
    gpu: bool
    enforces: dict[str, str]
    # (name, set?) for each credential the backend reads; never the value.
    credentials: list[tuple[str, bool]] = field(default_factory=list)
    configured: bool = True


@dataclass(frozen=True)
class ConnectionResult:
    backend: str
    ok: bool
    duration_ms: int
    message: str


def _backend_class(name: str):
    module, _, cls = BACKENDS[name].rpartition(".")
    return getattr(import_module(module), cls)


def backends_configured() -> list[str]:
    """The backends this installation lets a spec name (the process backend only when
    allowed), the default first."""
    names = [n for n in settings.SANDBOX_BACKENDS if n in BACKENDS]
    if not settings.ALLOW_UNSAFE_PROCESS_BACKEND:
        names = [n for n in names if n != "process"]
    return sorted(names, key=lambda n: n != settings.SANDBOX_BACKEND)


def backends_status(*, user) -> list[BackendStatus]:
    """Every configured backend, for admins (403 for anyone else)."""
    capability_require(user=user, capability="sandbox_view", message="Only admins see backends.")
    rows = []
    for name in backends_configured():
        try:
            cls = _backend_class(name)
        except ImportError:
            rows.append(
                BackendStatus(
                    name=name,
                    is_default=name == settings.SANDBOX_BACKEND,
                    local=name in LOCAL_BACKENDS,
                    installed=False,
                    isolation="backend not installed here",
                    capabilities=[],
                    gpu=False,
                    enforces=ENFORCES.get(name, {}),
                    configured=False,
                )
            )
            continue
        names = getattr(cls, "credentials", ())
        configured = getattr(cls, "configured", None)
        rows.append(
            BackendStatus(
                name=name,
                is_default=name == settings.SANDBOX_BACKEND,
                local=name in LOCAL_BACKENDS,
                installed=True,
                isolation=cls.isolation,
                capabilities=[w for flag, w in CAPABILITY_WORDS if flag in cls.capabilities],
                gpu=Capability.GPU in cls.capabilities,
                enforces=ENFORCES.get(name, {}),
                credentials=[(n, bool(credential(n))) for n in names],
                configured=configured() if configured is not None else True,
            )
        )
    return rows


def _redacted(text: str, names) -> str:
    """The provider's error text without any credential value in it."""
    for name in names:
        value = credential(name)
        if len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return text


def backend_connection_test(*, name: str, actor) -> ConnectionResult:
    """Start a tiny sandbox on `name`, run `echo ok`, tear it down; audited with its outcome
    and time. A failure is a result shown to the admin, not an error page."""
    capability_require(user=actor, capability="sandbox_view", message="Only admins test backends.")
    if name not in backends_configured():
        raise NotFound(f"No backend {name!r} is configured here.")
    credentials = getattr(_backend_class(name), "credentials", ())
    started = time.monotonic()
    output: list[bytes] = []
    sandbox, ok, message = None, False, ""
    try:
        spec = SandboxSpec(cpu=0.5, memory_mb=512, timeout_s=TEST_TIMEOUT_S)
        sandbox = sandbox_create(
            spec=spec, backend=name, owner_kind="backend_test", on_behalf_of=actor, actor=actor
        )

        def keep(event: ExecOutput) -> None:
            if event.stream == "stdout":
                output.append(event.data)

        command = sandbox_exec(sandbox=sandbox, argv=["echo", "ok"], timeout_s=60, on_output=keep)
        ok = command.exit_code == 0 and b"".join(output).strip() == b"ok"
        message = "echo ok answered ok" if ok else f"echo ok exited {command.exit_code}"
    except SandboxError as error:
        message = _redacted(str(error), credentials)[:500]
    finally:
        if sandbox is not None:
            with contextlib.suppress(SandboxError):  # else the reaper ends it by its deadline
                sandbox_terminate(sandbox=sandbox, reason="backend connection test", actor=actor)
    duration_ms = int((time.monotonic() - started) * 1000)
    audit_record(
        action="sandbox.backend.tested",
        actor=actor,
        outcome="success" if ok else "failure",
        target={"type": "sandboxes.backend", "id": name, "display": name},
        context={"sandbox_id": sandbox.pk if sandbox else None},
        payload={"backend": name, "duration_ms": duration_ms, "message": message},
    )
    return ConnectionResult(backend=name, ok=ok, duration_ms=duration_ms, message=message)
