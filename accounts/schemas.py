"""API schemas for the caller and their tokens."""

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


class TokenOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: str
    revoked: bool


class TokenCreatedOut(TokenOut):
    token: str
