"""Reads of sandboxes, and the one permission helper for sandboxes (log reads: logs.py)."""

from __future__ import annotations

from importlib import import_module

from accounts.roles import capability_require, user_can
from core.errors import NotFound, PermissionDenied
from sandboxes.backends import BACKENDS
from sandboxes.models import Sandbox, SandboxCommand, SandboxSnapshot

SANDBOX_ACTIONS = ("view", "terminate")


def sandbox_get_for_user(*, user, pk: int, action: str = "view") -> Sandbox:
    """The sandbox if `user` may see it (else 404); 403 when they may see it but not `action`.

    Admins (sandbox_view) see and terminate every sandbox; the person it runs for sees and
    terminates theirs; managers and reviewers see the sandboxes of campaigns, whose logs they
    read. Pages, the raw log download and the log socket all ask here.
    """
    if action not in SANDBOX_ACTIONS:
        raise ValueError(f"action must be one of {SANDBOX_ACTIONS}, got {action!r}")
    if user is None or not user.is_authenticated:
        raise NotFound("No such sandbox.")
    sandbox = Sandbox.objects.filter(pk=pk).first()
    if sandbox is None:
        raise NotFound("No such sandbox.")
    admin = user_can(user, "sandbox_view")
    mine = sandbox.on_behalf_of_id == user.pk
    campaign_reader = sandbox.campaign_id is not None and (
        user_can(user, "campaign_manage") or user_can(user, "change_review")
    )
    if not (admin or mine or campaign_reader):
        raise NotFound("No such sandbox.")
    if action == "terminate" and not (admin or mine):
        raise PermissionDenied(
            "You may look at this sandbox but not terminate it.", capability="sandbox_view"
        )
    return sandbox


def sandboxes_for_user(*, user, states=None, limit: int = 500) -> list[Sandbox]:
    """The sandbox list, for admins only (403 for anyone else)."""
    capability_require(
        user=user, capability="sandbox_view", message="Only admins may list sandboxes."
    )
    return sandbox_list(states=states, limit=limit)


def sandbox_list(*, states=None, limit: int = 500) -> list[Sandbox]:
    """Sandboxes newest first, optionally only in `states`."""
    rows = Sandbox.objects.select_related("on_behalf_of", "from_snapshot").order_by("-id")
    if states:
        rows = rows.filter(state__in=states)
    return list(rows[:limit])


def sandbox_commands(*, sandbox: Sandbox, limit: int = 200) -> list[SandboxCommand]:
    return list(sandbox.commands.order_by("id")[:limit])


def sandbox_snapshots(*, sandbox: Sandbox) -> list[SandboxSnapshot]:
    return list(sandbox.snapshots.order_by("id"))


def backend_isolation(name: str) -> str:
    """What the backend isolates with, in words for the UI (read from the class, not started)."""
    path = BACKENDS.get(name)
    if path is None:
        return "unknown backend"
    module, _, cls = path.rpartition(".")
    try:
        return getattr(import_module(module), cls).isolation
    except ImportError:
        return "backend not installed here"
