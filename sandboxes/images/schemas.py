"""API shapes of images (GET /api/v1/images)."""

from datetime import datetime

from ninja import Schema


class ImageOut(Schema):
    key: str
    kind: str
    state: str
    spec: dict
    size_bytes: int
    builds: int
    build_seconds: float | None
    error: str
    error_field: str
    created_at: datetime
    built_at: datetime | None
    last_used_at: datetime | None


class ImageListOut(Schema):
    items: list[ImageOut]


class ImageLogOut(Schema):
    key: str
    state: str
    text: str
