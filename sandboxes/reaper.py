"""The reaper: terminates sandboxes past their deadline, idle, stuck or whose owner is gone,
deletes snapshots nobody owns any more, and clears engine sandboxes no live record names.

Owners are looked up through a registry the higher layers fill (campaigns registers its
campaign and run kinds in its AppConfig.ready), so sandboxes never names their models.
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from audit.record import AuditWriteError
from sandboxes.backends import LOCAL_BACKENDS
from sandboxes.backends.base import SandboxError
from sandboxes.backends.cloud import created_at
from sandboxes.egress.worker import egress_dirs_sweep
from sandboxes.models import Sandbox, SandboxSnapshot, SandboxState
from sandboxes.services import (
    LIVE_STATES,
    backend_get,
    install_tag,
    live_external_ids,
    orphan_audit,
    sandbox_terminate,
    snapshot_delete,
)

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 120.0  # engine sandboxes younger than this may not have their record yet
STUCK = timedelta(hours=1)  # a create that has not finished by then never will

# kind -> (model, states in which it is done). An owner that is deleted, or done, no longer
# needs its sandboxes and snapshots.
OWNER_MODELS: dict[str, tuple[type[models.Model], tuple[str, ...]]] = {}


def owner_kind_register(*, kind: str, model: type[models.Model], done: tuple[str, ...]) -> None:
    OWNER_MODELS[kind] = (model, done)


def _owner_gone(kind: str, owner_id: int | None) -> bool:
    model, done = OWNER_MODELS.get(kind, (None, ()))
    if model is None or owner_id is None:
        return False
    state = model.objects.filter(pk=owner_id).values_list("state", flat=True).first()
    return state is None or state in done


def sandboxes_reap(*, now=None) -> list[Sandbox]:
    """Terminate sandboxes past their deadline or whose owner is gone; clear engine orphans."""
    now = now or timezone.now()
    reaped: list[Sandbox] = []
    for sandbox in Sandbox.objects.filter(state__in=LIVE_STATES).order_by("id"):
        if sandbox.deadline_at and sandbox.deadline_at <= now:
            reason = "deadline passed"
        elif _owner_gone(sandbox.owner_kind, sandbox.owner_id):
            reason = f"owner {sandbox.owner_kind} {sandbox.owner_id} is gone or done"
        elif _idle_for(sandbox, now):
            reason = f"idle for more than {sandbox.limits['idle_timeout_s']} s"
        elif sandbox.state == SandboxState.CREATING and sandbox.created_at < now - STUCK:
            reason = "stuck creating for an hour"
        else:
            continue
        try:
            reaped.append(sandbox_terminate(sandbox=sandbox, reason=f"reaped: {reason}"))
        except (SandboxError, AuditWriteError):  # unrecorded, it runs on until the next pass
            log.exception("could not reap sandbox %s", sandbox.pk)
    _snapshots_reap()
    _orphans_reap(now)
    egress_dirs_sweep()  # proxy sockets of worker processes that died
    return reaped


def _idle_for(sandbox: Sandbox, now) -> bool:
    """Past the spec's idle timeout: no command running and none finished recently."""
    idle_s = (sandbox.limits or {}).get("idle_timeout_s")
    if not idle_s:
        return False
    if sandbox.commands.filter(finished_at=None).exists():
        return False
    last = sandbox.commands.order_by("-id").values_list("finished_at", flat=True).first()
    return (last or sandbox.created_at) < now - timedelta(seconds=idle_s)


def _snapshots_reap() -> None:
    for snap in SandboxSnapshot.objects.filter(deleted_at=None).select_related("source"):
        if _owner_gone(snap.owner_kind, snap.owner_id):
            try:
                snapshot_delete(snapshot=snap)
            except SandboxError:
                continue  # still has live forks; the next pass deletes it


def _orphans_reap(now) -> None:
    """Engine sandboxes (and workspaces, containers, processes) that no live record names."""
    names = set(LOCAL_BACKENDS) | {settings.SANDBOX_BACKEND}
    names |= set(Sandbox.objects.filter(state__in=LIVE_STATES).values_list("backend", flat=True))
    for name in sorted(names):
        try:
            engine = backend_get(name)
        except SandboxError:
            continue  # not installed or not allowed here
        # Each is recorded before the engine removes it (committed: the reaper runs outside a
        # transaction); a trail that cannot take it stops this engine's sweep.
        record = functools.partial(orphan_audit, backend=name, reason="no live record names it")
        try:
            if hasattr(engine, "sweep"):
                live = live_external_ids(backend=name)
                engine.sweep(live, grace_s=ORPHAN_GRACE_S, before=_by_id(record))
            else:
                _labelled_orphans_terminate(name, engine, now, before=_by_id(record))
        except (SandboxError, AuditWriteError):
            log.exception("could not sweep the %s backend", name)


def _by_id(record):
    return lambda external_id: record(external_id=external_id)


owner_kind_register(kind="sandbox", model=Sandbox, done=("terminated", "failed"))


def _labelled_orphans_terminate(name: str, engine, now, *, before) -> list[str]:
    """This installation's sandboxes on an engine without a sweep of its own (the clouds),
    found by label, that no live record names and that are not being recorded.

    A worker writes the record only after the provider's create returns, so a sandbox seen
    here without a record may be seconds old: it is spared while a record is still creating
    for it (its convoy_sandbox label, or for a fork its convoy_run label) and for
    ORPHAN_GRACE_S after the creation time it carries (CREATED_LABEL). One without that label
    was made before Convoy stamped it and is old enough."""
    rows = Sandbox.objects.filter(backend=name, state__in=LIVE_STATES)
    live = set(rows.values_list("external_id", flat=True))
    creating = list(rows.filter(state=SandboxState.CREATING).values_list("pk", "run_id"))
    creating_ids = {str(pk) for pk, _ in creating}
    creating_runs = {str(run_id) for _, run_id in creating if run_id is not None}
    cutoff = now.timestamp() - ORPHAN_GRACE_S
    removed = []
    for handle in engine.list({"convoy_install": install_tag()}):
        labels = handle.labels or {}
        if handle.external_id in live or labels.get("convoy_sandbox") in creating_ids:
            continue
        if "convoy_sandbox" not in labels and labels.get("convoy_run") in creating_runs:
            continue
        created = created_at(labels)
        if created is not None and created > cutoff:
            continue
        before(handle.external_id)
        engine.terminate(handle)
        removed.append(handle.external_id)
    return removed
