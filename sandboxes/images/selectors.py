"""Reads of images: the list for pages, the API and `manage.py image ls`; one image by key."""

from __future__ import annotations

from django.db.models import QuerySet

from core.errors import NotFound
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
