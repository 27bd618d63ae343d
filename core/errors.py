"""The one error family services raise; mapped once for the API and once for pages.

A service refuses with a subclass of `ConvoyError` carrying a code, a message a person
understands and, when one input caused it, the field path (`repos[2].url`). `config/errors.py`
turns it into `{"detail", "code", "errors"}` with the class's status for the API, and into the
styled error page (or an htmx fragment) for pages. Nothing else catches it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ConvoyError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        errors: list[FieldError] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code
        self.errors = list(errors or ([FieldError(field, message)] if field else []))

    def as_body(self) -> dict:
        return {
            "detail": self.message,
            "code": self.code,
            "errors": [{"field": e.field, "message": e.message} for e in self.errors],
        }


class Invalid(ConvoyError):
    """The input cannot be accepted as it is; `field` names where."""

    status = 422
    code = "invalid"


class Unauthenticated(ConvoyError):
    """No valid credentials; the message says what was wrong with them (an expired token)."""

    status = 401
    code = "unauthenticated"


class NotFound(ConvoyError):
    """No such object, or the caller may not know it exists."""

    status = 404
    code = "not_found"


class PermissionDenied(ConvoyError):
    """The caller may see the object but their role does not allow this action."""

    status = 403
    code = "forbidden"
    # True when the raiser already wrote the refusal's audit event (config/errors.py then
    # does not write `people.permission.denied` a second time).
    audited = False

    def __init__(self, message: str, *, capability: str = "", **kwargs):
        super().__init__(message, **kwargs)
        self.capability = capability


class Conflict(ConvoyError):
    """The object's state does not allow this now (already launched, still running, …)."""

    status = 409
    code = "conflict"


class Unavailable(ConvoyError):
    """A dependency (the audit trail, a backend) could not do its part; nothing was changed."""

    status = 503
    code = "unavailable"
