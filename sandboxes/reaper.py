"""The reaper: terminates sandboxes past their deadline, idle, stuck or whose owner is gone,
deletes snapshots nobody owns any more, and clears engine sandboxes no live record names.

Owners are looked up through a registry the higher layers fill (campaigns registers its
campaign and run kinds in its AppConfig.ready), so sandboxes never names their models.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from sandboxes.backends import LOCAL_BACKENDS
from sandboxes.backends.base import SandboxError
from sandboxes.models import Sandbox, SandboxSnapshot, SandboxState
from sandboxes.services import (
    LIVE_STATES,
    backend_get,
    live_external_ids,
    orphan_audit,
    sandbox_terminate,
    sandboxes_orphans_terminate,
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
        except SandboxError:
            log.exception("could not reap sandbox %s", sandbox.pk)
    _snapshots_reap()
    _orphans_reap()
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


def _orphans_reap() -> None:
    """Engine sandboxes (and workspaces, containers, processes) that no live record names."""
    names = set(LOCAL_BACKENDS) | {settings.SANDBOX_BACKEND}
    names |= set(Sandbox.objects.filter(state__in=LIVE_STATES).values_list("backend", flat=True))
    for name in sorted(names):
        try:
            engine = backend_get(name)
        except SandboxError:
            continue  # not installed or not allowed here
        reason = "no live record names it"
        try:
            if not hasattr(engine, "sweep"):
                sandboxes_orphans_terminate(backend=name, labels={}, reason=reason)
                continue
            removed = engine.sweep(live_external_ids(backend=name), grace_s=ORPHAN_GRACE_S)
        except SandboxError:
            log.exception("could not sweep the %s backend", name)
            continue
        for external_id in removed:
            orphan_audit(backend=name, external_id=external_id, reason=reason)


owner_kind_register(kind="sandbox", model=Sandbox, done=("terminated", "failed"))
