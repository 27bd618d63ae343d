"""Sandbox writes: create, exec, files, snapshot, fork, terminate, orphans. Each one is audited.

The reaper (deadlines, owners gone, idle sandboxes, engine sweeps) is in sandboxes.reaper.

Engine calls are slow and happen outside database transactions; the rows and audit events
around them are written in short transactions of their own. `sandbox_exec` commits its
"started" event before the command runs, so a command nobody could record never runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.record import audit_record
from core.errors import Unavailable
from core.rows import row_insert
from core.secret_forms import SecretScanner
from sandboxes.backends import BACKENDS
from sandboxes.backends.base import (
    Capability,
    ExecOutput,
    ExecResult,
    NotSupported,
    SandboxBackend,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SnapshotHandle,
)
from sandboxes.backends.local import install_id
from sandboxes.egress.sandbox import egress_attach, egress_release, egress_wanted
from sandboxes.logs import log_capture_open, log_system_line
from sandboxes.models import Sandbox, SandboxCommand, SandboxSnapshot, SandboxState
from sandboxes.records import (
    LIVE_STATES,
    command_finished_record,
    command_started_record,
    sandbox_context,
    sandbox_started_record,
    sandbox_terminated_record,
    sandbox_termination_failed_record,
    sandbox_termination_requested_record,
)

_backends: dict[str, SandboxBackend] = {}


class SandboxUnavailable(Unavailable, SandboxError):
    """The engine failed a request made for a person (503 on a page or the API). It is still a
    SandboxError, so workers and the reaper, which retry or log engine errors, treat it alike."""


# --- backends -----------------------------------------------------------------------------------
def backend_get(name: str | None = None) -> SandboxBackend:
    """The configured backend (or `name`); the unsafe process backend only when allowed."""
    name = name or settings.SANDBOX_BACKEND
    if name not in BACKENDS:
        known = ", ".join(BACKENDS)
        raise SandboxError(f"unknown sandbox backend {name!r}; expected one of {known}")
    if name == "process" and not settings.ALLOW_UNSAFE_PROCESS_BACKEND:
        raise SandboxError(
            "the process backend runs commands unsandboxed; "
            "set CONVOY_ALLOW_UNSAFE_PROCESS_BACKEND=1 to use it for development"
        )
    if name not in _backends:
        module, _, cls = BACKENDS[name].rpartition(".")
        _backends[name] = getattr(import_module(module), cls)()
    return _backends[name]


def backends_warm() -> list[str]:
    """Make the local engines installed here (their modules, bwrap's seccomp filter, runsc's
    platforms) before a worker process takes its first run; the names made. One that cannot
    be made is skipped: the runs that ask for it say why."""
    made = []
    for name in ("bwrap", "gvisor"):
        try:
            backend_get(name)
        except SandboxError:
            continue
        made.append(name)
    return made


def sandbox_handle(sandbox: Sandbox) -> SandboxHandle:
    """What the engine knows the sandbox by."""
    return SandboxHandle(sandbox.backend, sandbox.external_id, sandbox.labels)


def _who(actor) -> dict:
    """Sandboxes act for a person (on_behalf_of) or the system; a user acting is a human."""
    return {"actor": actor} if actor is not None else {"actor_type": "agent"}


# --- create -------------------------------------------------------------------------------------
def _spec_labels(spec: SandboxSpec, **ids) -> SandboxSpec:
    """The spec with Convoy's labels, by which the reaper finds this installation's sandboxes."""
    ids["convoy_install"] = install_tag()
    labels = {**spec.labels, **{k: str(v) for k, v in ids.items() if v is not None}}
    return SandboxSpec(**{**spec.__dict__, "labels": labels})


def _row_new(
    *, spec, backend, owner_kind, owner_id, campaign_id, run_id, variant_id, on_behalf_of, snap
) -> Sandbox:
    return row_insert(  # on every run's path: one plain INSERT (core.rows)
        Sandbox(
            backend=backend.name,
            unsafe=backend.unsafe,
            image=spec.image_key or spec.image,  # a campaign image by key (sandboxes/images)
            network=str(spec.network),
            limits={
                "cpu": spec.cpu,
                "memory_mb": spec.memory_mb,
                "gpu": spec.gpu,
                "pids_max": spec.pids_max,
                "disk_mb": spec.disk_mb,
                "timeout_s": spec.timeout_s,
                "idle_timeout_s": spec.idle_timeout_s,
                **_egress_limits(spec),
            },
            labels=dict(spec.labels),
            owner_kind=owner_kind,
            owner_id=owner_id,
            campaign_id=campaign_id,
            run_id=run_id,
            variant_id=variant_id,
            on_behalf_of=on_behalf_of,
            from_snapshot=snap,
            deadline_at=timezone.now() + timedelta(seconds=spec.timeout_s),
        )
    )


def _egress_limits(spec: SandboxSpec) -> dict:
    """What the row keeps of the allowlist (the page and the created event show it)."""
    if not egress_wanted(spec):
        return {}
    return {
        "egress_mb": spec.egress_mb,
        "network_allow": list(spec.allowed_domains),
        "package_indexes": spec.package_indexes,
    }


def _started(sandbox: Sandbox, handle: SandboxHandle | None, error: Exception | None, actor):
    """Record the outcome of an engine create: running + created event, or failed."""
    sandbox_started_record(sandbox, handle, error, _who(actor))


def sandbox_create(
    *,
    spec: SandboxSpec,
    backend: str | None = None,
    owner_kind: str = "",
    owner_id: int | None = None,
    campaign_id=None,
    run_id=None,
    variant_id=None,
    on_behalf_of=None,
    actor=None,
) -> Sandbox:
    """Start a sandbox on the engine and record it; SandboxError (row marked failed) if it can't."""
    engine = backend_get(backend)
    spec = _spec_labels(spec, convoy_campaign=campaign_id, convoy_run=run_id)
    sandbox = _row_new(
        spec=spec,
        backend=engine,
        owner_kind=owner_kind,
        owner_id=owner_id,
        campaign_id=campaign_id,
        run_id=run_id,
        variant_id=variant_id,
        on_behalf_of=on_behalf_of,
        snap=None,
    )
    try:
        handle = engine.create(
            egress_attach(_spec_labels(spec, convoy_sandbox=sandbox.pk), engine, sandbox=sandbox)
        )
    except Exception as exc:
        egress_release(sandbox)
        _started(sandbox, None, exc, actor)
        raise
    _started(sandbox, handle, None, actor)
    return sandbox


# --- exec ---------------------------------------------------------------------------------------
def _live(sandbox: Sandbox) -> None:
    sandbox.refresh_from_db(fields=["state", "external_id"])
    if sandbox.state != SandboxState.RUNNING:
        raise SandboxError(f"sandbox {sandbox.pk} is {sandbox.state}, not running")


def sandbox_exec(
    *,
    sandbox: Sandbox,
    argv: list[str],
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    output_cap: int = 10 * 1024 * 1024,
    secrets: dict[str, str] | None = None,
    on_output: Callable[[ExecOutput], None] | None = None,
    last: bool = False,
    shown: str | None = None,
    log_stop_at: bytes | None = None,
) -> SandboxCommand:
    """Run argv in the sandbox, streaming output; the command row holds the result.

    `last`: nothing more runs in this sandbox before it is terminated (see the backend's exec).
    `shown`: the log's `$ …` line instead of argv (the user's step inside a caller's wrapper).
    `log_stop_at`: the live log stops at this stdout marker (what follows is the caller's own
    output, e.g. a diff); the caller, the record and the digest still get every byte."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise SandboxError("argv must be a non-empty list of strings")
    if not sandbox.external_id:  # an instance older than its engine create
        _live(sandbox)
    secrets = secrets or {}
    env = dict(env or {})
    # The command row and the audit trail keep argv with secret values masked (every form).
    mask = SecretScanner(secrets).mask if secrets else str  # built once: it compiles every form
    argv_masked = list(map(mask, argv))
    command = command_started_record(  # refused unless the sandbox's row says running
        sandbox,
        argv=argv_masked,
        cwd=cwd or "",
        env_names=sorted({*env, *secrets}),
        secret_names=sorted(secrets),
    )
    # Committed (or the caller's transaction holds it): only now may the command run.
    digest = hashlib.sha256()
    result: ExecResult | None = None
    # Besides the caller, the output goes to the live log (masked, stored, pushed).
    header = mask(shown) if shown else shown
    capture = log_capture_open(
        sandbox=sandbox, command_id=command.pk, argv=command.argv, header=header, secrets=secrets
    )
    to_log = _LogUntil(capture, log_stop_at)
    try:
        events = backend_get(sandbox.backend).exec(
            sandbox_handle(sandbox),
            list(argv),
            cwd=cwd,
            env={**env, **secrets},
            timeout_s=timeout_s,
            output_cap=output_cap,
            last=last,
        )
        for event in events:
            if isinstance(event, ExecResult):
                result = event
                continue
            digest.update(event.data)
            to_log.feed(event.stream, event.data)
            if on_output is not None:
                on_output(event)
    except Exception as exc:
        _exec_done(sandbox, command, None, digest, error=exc)
        raise
    finally:
        to_log.close()  # what was held back for a marker that never came
        capture.close()
    _exec_done(sandbox, command, result, digest)
    return command


class _LogUntil:
    """Feeds a log capture until a marker appears on stdout (the marker and the rest not)."""

    def __init__(self, capture, marker: bytes | None) -> None:
        self.capture, self.marker, self.held, self.open = capture, marker, b"", True

    def feed(self, stream: str, data: bytes) -> None:
        if not self.open:
            return
        if not self.marker or stream != "stdout":
            self.capture.feed(stream, data)
            return
        window = self.held + data
        at = window.find(self.marker)
        if at >= 0:
            self.open = False
            window = window[:at]
        else:  # a marker split across chunks: hold back what could be its beginning
            cut = max(0, len(window) - len(self.marker) + 1)
            window, self.held = window[:cut], window[cut:]
        if window:
            self.capture.feed(stream, window)

    def close(self) -> None:
        if self.open and self.held:
            self.capture.feed("stdout", self.held)


def _exec_done(sandbox, command, result: ExecResult | None, digest, *, error=None) -> None:
    command.finished_at = timezone.now()
    if result is not None:
        command.exit_code = result.exit_code
        command.timed_out = result.timed_out
        command.truncated = result.truncated
        command.bytes_out = result.bytes_out
        command.duration_ms = result.duration_ms
        command.limit_hit = result.limit_hit or ""
    else:
        command.duration_ms = int((command.finished_at - command.started_at).total_seconds() * 1e3)
    command.output_sha256 = digest.hexdigest()
    command_finished_record(sandbox, command, error)
    if command.limit_hit:  # the one clear line, beside the output it cut short
        log_system_line(sandbox=sandbox, text=f"stopped: {command.limit_hit}")


# --- files --------------------------------------------------------------------------------------
def sandbox_write_file(*, sandbox: Sandbox, path: str, data: bytes, mode: int = 0o644) -> None:
    _live(sandbox)
    backend_get(sandbox.backend).write_file(sandbox_handle(sandbox), path, data, mode)


def sandbox_read_file(*, sandbox: Sandbox, path: str) -> bytes:
    _live(sandbox)
    return backend_get(sandbox.backend).read_file(sandbox_handle(sandbox), path)


# --- snapshots and forks ------------------------------------------------------------------------
def sandbox_snapshot(
    *, sandbox: Sandbox, owner_kind: str = "", owner_id: int | None = None
) -> SandboxSnapshot:
    """Freeze the sandbox's filesystem; the snapshot belongs to the owner (default: the sandbox)."""
    _live(sandbox)
    engine = backend_get(sandbox.backend)
    if Capability.SNAPSHOT not in engine.capabilities:
        raise NotSupported(f"the {engine.name} backend cannot snapshot")
    started = time.monotonic()
    handle = engine.snapshot(sandbox_handle(sandbox))
    return _snapshot_record(sandbox, engine, handle, owner_kind, owner_id, started, "filesystem")


def _snapshot_record(sandbox, engine, handle, owner_kind, owner_id, started, kind):
    with transaction.atomic():
        snap = SandboxSnapshot.objects.create(
            source=sandbox,
            backend=engine.name,
            external_id=handle.external_id,
            owner_kind=owner_kind or "sandbox",
            owner_id=owner_id if owner_kind else sandbox.pk,
        )
        audit_record(
            action="sandbox.snapshot.created",
            actor_type="agent",
            on_behalf_of=sandbox.on_behalf_of,
            target=snap,
            context=sandbox_context(sandbox),
            payload={
                "external_id": handle.external_id,
                "kind": kind,
                "duration_ms": int((time.monotonic() - started) * 1000),
                "owner_kind": snap.owner_kind,
                "owner_id": snap.owner_id,
            },
        )
    return snap


def sandbox_checkpoint(
    *, sandbox: Sandbox, owner_kind: str = "", owner_id: int | None = None
) -> SandboxSnapshot:
    """Save the sandbox's memory and files; `sandbox_fork` of it gives running copies."""
    _live(sandbox)
    engine = backend_get(sandbox.backend)
    if Capability.CHECKPOINT not in engine.capabilities:
        raise NotSupported(f"the {engine.name} backend cannot checkpoint memory")
    started = time.monotonic()
    handle = engine.checkpoint(sandbox_handle(sandbox))
    return _snapshot_record(sandbox, engine, handle, owner_kind, owner_id, started, "memory")


def sandbox_fork(
    *,
    snapshot: SandboxSnapshot,
    count: int,
    spec: SandboxSpec,
    owner_kind: str = "",
    owner_id: int | None = None,
    campaign_id=None,
    run_id=None,
    variant_id=None,
    on_behalf_of=None,
    actor=None,
) -> list[Sandbox]:
    """N sandboxes whose workspaces start as the snapshot's files (copy-on-write where possible)."""
    if count < 1:
        raise SandboxError(f"count must be at least 1, got {count}")
    if snapshot.deleted_at is not None:
        raise SandboxError(f"snapshot {snapshot.pk} has been deleted")
    engine = backend_get(snapshot.backend)
    spec = _spec_labels(spec, convoy_campaign=campaign_id, convoy_run=run_id)
    if on_behalf_of is None:
        on_behalf_of = snapshot.source.on_behalf_of
    rows = [
        _row_new(
            spec=spec,
            backend=engine,
            owner_kind=owner_kind,
            owner_id=owner_id,
            campaign_id=campaign_id,
            run_id=run_id,
            variant_id=variant_id,
            on_behalf_of=on_behalf_of,
            snap=snapshot,
        )
        for _ in range(count)
    ]
    try:
        handles = _fork(engine, SnapshotHandle(snapshot.backend, snapshot.external_id), spec, rows)
    except Exception as exc:
        for row in rows:
            egress_release(row)
            _started(row, None, exc, actor)
        raise
    for row, handle in zip(rows, handles, strict=True):
        _started(row, handle, None, actor)
    return rows


def _fork(engine, snap: SnapshotHandle, spec: SandboxSpec, rows: list[Sandbox]) -> list:
    """The engine's fork; with the egress proxy, one at a time (each fork has its own socket)."""
    if not (egress_wanted(spec) and Capability.EGRESS_PROXY in engine.capabilities):
        return engine.fork(snap, egress_attach(spec, engine, sandbox=rows[0]), len(rows))
    handles = []
    try:
        for row in rows:
            handles += engine.fork(snap, egress_attach(spec, engine, sandbox=row), 1)
    except BaseException:
        for handle in handles:
            with contextlib.suppress(SandboxError):  # else the reaper finds it by label
                engine.terminate(handle)
        raise
    return handles


def snapshot_delete(*, snapshot: SandboxSnapshot) -> None:
    """Delete the snapshot's layer or image; idempotent. Refused while a live fork uses it."""
    if snapshot.deleted_at is not None:
        return
    if snapshot.forks.filter(state__in=LIVE_STATES).exists():
        raise SandboxError(f"snapshot {snapshot.pk} still has running forks")
    with contextlib.suppress(NotSupported):  # nothing stored engine-side
        backend_get(snapshot.backend).delete_snapshot(
            SnapshotHandle(snapshot.backend, snapshot.external_id)
        )
    SandboxSnapshot.objects.filter(pk=snapshot.pk, deleted_at=None).update(
        deleted_at=timezone.now()
    )
    snapshot.deleted_at = timezone.now()


# --- terminate and reap -------------------------------------------------------------------------
def sandbox_terminate(*, sandbox: Sandbox, reason: str, actor=None, fresh: bool = False) -> Sandbox:
    """Stop the sandbox and free its workspace; a second call changes nothing.

    `fresh`: the caller's instance is the one its run created and ran commands in, so its
    state and engine id need no SELECT first (the teardown of a finished variant). If a person
    or the reaper ended it meanwhile, the engine's terminate is repeated (the engines' is
    idempotent) and the record's update, conditional on a live state, writes nothing."""
    if not fresh:
        sandbox.refresh_from_db(fields=["state", "external_id"])
    if sandbox.state not in LIVE_STATES:
        return sandbox
    if actor is None:
        return _sandbox_terminate_recorded_first(sandbox, reason=reason)
    # A person's termination is on record before the engine stops anything: the event
    # written with the state change comes after the stop and can fail, which left the
    # sandbox gone with nothing saying who ended it.
    sandbox_termination_requested_record(sandbox, reason=reason, actor=actor)
    if sandbox.external_id:
        try:
            backend_get(sandbox.backend).terminate(sandbox_handle(sandbox))
        except SandboxError as exc:
            if fresh:  # ended elsewhere meanwhile? then there is nothing left to do
                sandbox.refresh_from_db(fields=["state", "external_id"])
                if sandbox.state not in LIVE_STATES:
                    return sandbox
            raise SandboxUnavailable(f"Could not terminate sandbox {sandbox.pk}: {exc}") from exc
    egress_release(sandbox)
    sandbox_terminated_record(sandbox, reason=reason, actor=actor)
    return sandbox


def _sandbox_terminate_recorded_first(sandbox: Sandbox, *, reason: str) -> Sandbox:
    """The system's termination (the reaper, a run's teardown or cleanup, a command's end): the
    state change and its `sandbox.sandbox.terminated` event, one statement as ever, committed
    before the engine is asked. A worker that dies between the two leaves a record ended and an
    engine sandbox no live record names, which the reaper's orphan sweep removes and records;
    the other order left an engine action with no record. If the trail cannot take the event,
    the engine is not asked and the sandbox runs on (the reaper tries again). Lost to another
    termination, there is nothing left to do: that one asks the engine."""
    if not sandbox_terminated_record(sandbox, reason=reason, actor=None):
        return sandbox
    try:
        if sandbox.external_id:
            backend_get(sandbox.backend).terminate(sandbox_handle(sandbox))
    except SandboxError as exc:
        # Recorded as ended, still on the engine: said in the trail; the sweep retries it.
        sandbox_termination_failed_record(sandbox, error=exc)
        raise SandboxUnavailable(f"Could not terminate sandbox {sandbox.pk}: {exc}") from exc
    finally:
        egress_release(sandbox)  # its network is cut either way
    return sandbox


# --- orphans -------------------------------------------------------------------------------------
def live_external_ids(*, backend: str) -> set[str]:
    return set(
        Sandbox.objects.filter(backend=backend, state__in=LIVE_STATES).values_list(
            "external_id", flat=True
        )
    )


def orphan_audit(*, backend: str, external_id: str, reason: str) -> None:
    audit_record(
        action="sandbox.orphan.reaped",
        actor_type="system",
        target={"type": "sandboxes.sandbox", "id": "", "display": external_id},
        reason=reason,
        payload={"backend": backend, "external_id": external_id},
    )


def sandboxes_orphans_terminate(*, backend: str, labels: dict[str, str], reason: str) -> list[str]:
    """Terminate, now, the engine sandboxes with `labels` that no live record names: what a
    worker that died made but never recorded as running (killed between the engine's create or
    fork and its record's update). The reaper would find them too, after ORPHAN_GRACE_S; a run
    resumed by another worker knows they are dead work at once. Returns their ids."""
    engine = backend_get(backend)
    live = live_external_ids(backend=backend)
    removed = []
    for handle in engine.list({**labels, "convoy_install": install_tag()}):
        if handle.external_id not in live:
            # On record before the engine is asked, as the reaper's terminations are.
            orphan_audit(backend=backend, external_id=handle.external_id, reason=reason)
            engine.terminate(handle)
            removed.append(handle.external_id)
    return removed


def install_tag() -> str:
    """The label value that marks this installation's sandboxes on a shared engine."""
    return install_id(settings.DATA_DIR)
