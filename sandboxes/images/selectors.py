"""Reads of images: the list for pages, the API and `manage.py image ls`; one image by key."""

from __future__ import annotations

import os

from django.db.models import QuerySet

from accounts.roles import user_can
from core.errors import Invalid, NotFound, PermissionDenied
from sandboxes.models import Image


def images_list() -> QuerySet[Image]:
    return Image.objects.order_by("-last_used_at", "-created_at")


def image_get(*, key: str) -> Image:
    """An image by its key, or by a unique prefix of at least 6 characters (as `ls` shows)."""
    if len(key) < 6:
        raise NotFound(f"no image {key!r}: give at least 6 characters of its key")
    matches = list(Image.objects.filter(key__startswith=key)[:2])
    if len(matches) != 1:
        raise NotFound(f"no image {key!r}" if not matches else f"{key!r} names several images")
    return matches[0]


def image_require_view(*, user) -> None:
    """Who may see images: people who launch campaigns (they name images) and sandbox viewers.
    Images hold no secrets: build logs print names of variables, never values."""
    if not (user_can(user, "campaign_manage") or user_can(user, "sandbox_view")):
        raise PermissionDenied(
            "Your role does not allow this (sandbox view).", capability="sandbox_view"
        )


def image_log_tail(*, image: Image, max_bytes: int = 200_000) -> str:
    """The end of the image's latest build log ('' when there is none)."""
    try:
        with open(image.build_log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def image_log_since(
    *, image: Image, offset: int | None, max_bytes: int = 200_000
) -> tuple[str, int]:
    """The log's text after byte `offset` (its tail when None) and the offset to ask from next.
    Text stops at the last complete line, so a line being written (or a character split across
    writes) comes whole in the next read."""
    if offset is not None and offset < 0:
        raise Invalid("offset: a byte position in the log, 0 or more", field="offset")
    try:
        with open(image.build_log_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if offset is not None and offset > size:
                raise Invalid(f"offset: past the end of the log ({size} bytes)", field="offset")
            start = max(0, size - max_bytes) if offset is None else offset
            f.seek(start)
            chunk = f.read(max_bytes)
    except (OSError, ValueError):
        return "", offset or 0
    end = chunk.rfind(b"\n") + 1
    if end == 0 and len(chunk) < max_bytes:
        return "", start  # only a partial line so far
    chunk = chunk[:end] if end else chunk
    return chunk.decode("utf-8", "replace"), start + len(chunk)
