"""Reads of sandboxes and their logs, and the one permission helper for sandboxes."""

from __future__ import annotations

from collections.abc import Iterator

from django.core.exceptions import PermissionDenied
from django.http import Http404

from accounts.roles import user_can
from sandboxes.models import LogLine, Sandbox


def sandbox_get_for_user(*, user, pk: int, write: bool = False) -> Sandbox:
    """The sandbox if `user` may see it (404 otherwise); 403 when `write` and they may not change it.

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


def log_lines_after(*, sandbox_id: int, after: int, limit: int = 2000) -> list[LogLine]:
    """Up to `limit` stored lines with seq > after, in order."""
    return list(
        LogLine.objects.filter(sandbox_id=sandbox_id, seq__gt=after)
        .order_by("seq")
        .only("seq", "stream", "text", "command_id")[:limit]
    )


def log_lines_tail(*, sandbox_id: int, count: int = 500) -> list[LogLine]:
    """The last `count` stored lines, in order."""
    lines = list(
        LogLine.objects.filter(sandbox_id=sandbox_id)
        .order_by("-seq")
        .only("seq", "stream", "text", "command_id")[:count]
    )
    lines.reverse()
    return lines


def log_last_seq(*, sandbox_id: int) -> int:
    return Sandbox.objects.filter(pk=sandbox_id).values_list("last_log_seq", flat=True).first() or 0


def log_text_iter(*, sandbox_id: int, chunk: int = 5000) -> Iterator[str]:
    """The raw log as text, line by line with newlines, streamed from storage in chunks."""
    after = 0
    while True:
        rows = list(
            LogLine.objects.filter(sandbox_id=sandbox_id, seq__gt=after)
            .order_by("seq")
            .values_list("seq", "text")[:chunk]
        )
        if not rows:
            return
        yield "".join(f"{text}\n" for _, text in rows)
        after = rows[-1][0]
