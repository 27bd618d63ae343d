"""API schemas for the caller and their tokens."""

from typing import Literal

from ninja import Schema
from pydantic import Field


class MeOut(Schema):
    id: int
    username: str
    role: str | None
    capabilities: list[str]
    auth: str


class TokenIn(Schema):
    name: str = Field("", max_length=100)
    scope: Literal["read", "write"] = Field(
        "read", description="read: GET and HEAD only; write: everything the caller may do"
    )
    days: int | None = Field(
        None,
        description="lifetime in days; default 90, at most CONVOY_API_TOKEN_MAX_DAYS (366)",
    )


class TokenOut(Schema):
    id: int
    name: str
    prefix: str
    scope: str
    created_at: str
    expires_at: str
    expires_soon: bool = Field(description="expires within 7 days")
    expired: bool
    revoked: bool


class TokenCreatedOut(TokenOut):
    token: str
