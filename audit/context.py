"""Who and where a request comes from, kept for the audit events it causes."""

import contextvars
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    ip: str
    user_agent: str


current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "convoy_audit_request", default=None
)


def client_ip(request: HttpRequest) -> str:
    """The client's address, believing X-Forwarded-For only as far as the trusted proxy hops."""
    remote = request.META.get("REMOTE_ADDR", "")
    hops = settings.TRUSTED_PROXY_HOPS
    if hops <= 0:
        return remote
    forwarded = [
        p.strip() for p in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if p.strip()
    ]
    # The last `hops` entries were appended by our own proxies; the one before them is the client
    # as our outermost proxy saw it. Anything further left is client-supplied and ignored.
    if len(forwarded) >= hops:
        return forwarded[-hops]
    return remote


def request_context(request: HttpRequest) -> RequestContext:
    """Who asked, from where. A request id in `X-Request-ID` is taken only from our own proxies
    (`TRUSTED_PROXY_HOPS` > 0): from anyone else it would let a client make its events share
    another request's id; they get a fresh one."""
    given = request.META.get("HTTP_X_REQUEST_ID", "")[:64] if settings.TRUSTED_PROXY_HOPS else ""
    return RequestContext(
        request_id=given or uuid.uuid4().hex,
        ip=client_ip(request),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:300],
    )
