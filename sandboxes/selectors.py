"""Reads of sandboxes, and the one permission helper for sandboxes (log reads: logs.py)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from accounts.roles import user_can
from sandboxes.models import Sandbox, SandboxCommand, SandboxSnapshot


def sandbox_get_for_user(*, user, pk: int, write: bool = False) -> Sandbox:
    """The sandbox if `user` may see it (else 404); 403 when `write` and they may not change it.

    Admins (sandbox_view) see every sandbox; the person it runs for sees theirs; managers and
    reviewers see the sandboxes of campaigns, whose logs they read.
    """
    if user is None or not user.is_authenticated:
        raise Http404("No such sandbox")
    sandbox = Sandbox.objects.filter(pk=pk).first()
    if sandbox is None:
        raise Http404("No such sandbox")
    admin = user_can(user, "sandbox_view")
    mine = sandbox.on_behalf_of_id == user.pk
    campaign_reader = sandbox.campaign_id is not None and (
        user_can(user, "campaign_manage") or user_can(user, "change_review")
    )
    if not (admin or mine or campaign_reader):
        raise Http404("No such sandbox")
    if write and not (admin or mine):
        raise PermissionDenied("You may look at this sandbox but not change it.")
    return sandbox


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
    from importlib import import_module

    from sandboxes.backends import BACKENDS

    path = BACKENDS.get(name)
    if path is None:
        return "unknown backend"
    module, _, cls = path.rpartition(".")
    try:
        return getattr(import_module(module), cls).isolation
    except ImportError:
        return "backend not installed here"
