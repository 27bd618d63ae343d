from audit.context import current_request, request_context


class RequestContextMiddleware:
    """Makes the request's id, client IP and user agent available to audit_record."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = current_request.set(request_context(request))
        try:
            return self.get_response(request)
        finally:
            current_request.reset(token)
