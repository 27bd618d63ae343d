"""The error body every API route returns, for the OpenAPI document."""

from ninja import Schema

# The largest `offset` a list route takes: past it the database's bigint overflows (a 500);
# no list is that long.
OFFSET_MAX = 10**12


class FieldErrorOut(Schema):
    field: str
    message: str


class ErrorOut(Schema):
    detail: str
    code: str
    errors: list[FieldErrorOut] = []


def errors_for(*statuses: int) -> dict:
    """`response=` entries documenting the error statuses a route can return."""
    return dict.fromkeys(statuses, ErrorOut)
