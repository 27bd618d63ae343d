"""Request context for audit events, and the 503 page when an event could not be recorded."""

from django.shortcuts import render

from audit.context import current_request, request_context
from audit.record import AuditWriteError


class RequestContextMiddleware:
    """Makes the request's id, client IP and user agent available to audit_record, and turns a
    failed audit write (the change was rolled back) into a clear 503 page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = current_request.set(request_context(request))
        try:
            return self.get_response(request)
        finally:
            current_request.reset(token)

    def process_exception(self, request, exception):
        if isinstance(exception, AuditWriteError):
            return render(request, "audit/unavailable.html", status=503)
        return None
