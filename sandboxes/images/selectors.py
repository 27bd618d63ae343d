"""Reads of images: the list for pages, the API and `manage.py image ls`; one image by key."""

from __future__ import annotations

import os

from django.db.models import QuerySet

from accounts.roles import user_can
from core.errors import NotFound, PermissionDenied
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
