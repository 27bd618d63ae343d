"""Errors mapped once: one set of django-ninja handlers for the API, one middleware for pages.

Services raise `core.errors.ConvoyError` (and Django raises `Http404`/`PermissionDenied`); no
route or view catches them. The API answers `{"detail", "code", "errors"}` with the error's
status; a page gets the site's styled error page, an htmx request the `error` partial of the
same template (swapped into `#notices`, so the page the user is on stays). Every refusal (403)
is audited, page or API.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser

from audit.record import AuditWriteError, audit_denied
from core.errors import (
    ConvoyError,
    FieldError,
    Invalid,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from core.json_strict import DuplicateKeyError, json_loads_strict
from core.text import data_text_problem, text_problem

AUDIT_UNAVAILABLE = "The change was not made: the audit trail could not record it. Try again."


def as_convoy_error(exc: Exception) -> ConvoyError | None:
    """The Convoy error an exception stands for, or None if it is not a refusal we know."""
    if isinstance(exc, ConvoyError):
        return exc
    if isinstance(exc, Http404):
        return NotFound(str(exc) or "Not found.")
    if isinstance(exc, DjangoPermissionDenied):
        return PermissionDenied(str(exc) or "Your role does not allow this.")
    if isinstance(exc, AuditWriteError):
        return Unavailable(AUDIT_UNAVAILABLE, code="audit_unavailable")
    return None


def _denial_audited(request: HttpRequest, error: ConvoyError) -> None:
    user = getattr(request, "auth", None) or getattr(request, "user", None)
    if isinstance(error, PermissionDenied) and not error.audited:
        audit_denied(actor=user, capability=error.capability or error.code, path=request.path)
        error.audited = True


def _field(loc) -> str:
    loc = tuple(loc)
    if len(loc) == 2 and loc[0] == "body":
        return "body"  # ("body", <the route's parameter name>): the body itself is missing
    if len(loc) > 2 and loc[0] == "body":
        loc = loc[2:]  # ("body", <the route's parameter name>, field, ...): name the field
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "payload", "form")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "request"


def api_errors_install(api: NinjaAPI) -> None:
    def respond(request, error: ConvoyError):
        _denial_audited(request, error)
        return api.create_response(request, error.as_body(), status=error.status)

    @api.exception_handler(ConvoyError)
    def _convoy(request, exc):
        return respond(request, exc)

    @api.exception_handler(Http404)
    def _not_found(request, exc):
        return respond(request, as_convoy_error(exc))

    @api.exception_handler(DjangoPermissionDenied)
    def _denied(request, exc):
        return respond(request, as_convoy_error(exc))

    @api.exception_handler(AuditWriteError)
    def _audit_failed(request, exc):
        # Fail closed: the change was rolled back because its audit event could not be written.
        return respond(request, as_convoy_error(exc))

    @api.exception_handler(AuthenticationError)
    def _unauthenticated(request, exc):
        return respond(request, Unauthenticated("Authentication required: send a valid API token."))

    @api.exception_handler(NinjaValidationError)
    def _invalid(request, exc):
        errors = [FieldError(_field(e.get("loc", ())), e.get("msg", "invalid")) for e in exc.errors]
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or "Invalid input."
        body = {"detail": detail, "code": "invalid", "errors": [e.__dict__ for e in errors]}
        return api.create_response(request, body, status=422)

    @api.exception_handler(HttpError)
    def _http(request, exc):
        if isinstance(exc.__cause__, ConvoyError):  # TextCheckingParser's refusal, unwrapped
            return respond(request, exc.__cause__)
        body = {"detail": str(exc), "code": f"http_{exc.status_code}", "errors": []}
        return api.create_response(request, body, status=exc.status_code)


class TextCheckingParser(Parser):
    """JSON bodies as ninja parses them, refused (422 naming the field) when an object names a
    key twice (json.loads kept the last value silently: a spec's `image` given twice) or a
    string or key holds text no column can store: NUL (PostgreSQL refuses it) or a lone
    surrogate."""

    def parse_body(self, request: HttpRequest):
        try:
            data = json_loads_strict(request.body)
        except DuplicateKeyError as exc:
            raise Invalid(f"{exc.path}: duplicate key", field=exc.path) from None
        problem = data_text_problem(data)
        if problem:
            # ninja wraps a parser's exception in HttpError(400); config's handler unwraps it.
            raise Invalid(problem[1], field=problem[0] or "body")
        return data


def request_text_problem(request: HttpRequest) -> tuple[str, str] | None:
    """(parameter, message) for NUL or a lone surrogate in the path, the query string or a
    form body; JSON bodies are checked by `TextCheckingParser` (API) or the view."""
    if problem := text_problem(request.path_info):
        return "path", problem
    sources = [request.GET]
    if request.method == "POST" and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        # The body first: parsed from it, the form leaves `request.body` readable for a view
        # that reads it (a multipart POST read as a stream does not). No route takes uploads;
        # BodySizeLimitMiddleware bounds it.
        request.body  # noqa: B018
        sources.append(request.POST)
    for params in sources:
        for key, values in params.lists():
            if problem := text_problem(key):
                return "parameters", f"a parameter name {problem}"
            for value in values:
                if isinstance(value, str) and (problem := text_problem(value)):
                    return key, problem
    return None


class TextParamsMiddleware:
    """400 naming the parameter before a view passes NUL or a lone surrogate to the database
    (psycopg raises on either: a server error, or a write half done)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = request_text_problem(request)
        if problem is None:
            return self.get_response(request)
        field, message = problem
        error = ConvoyError(f"{field}: {message}", field=field, code="invalid_text")
        if request.path.startswith("/api/"):
            return JsonResponse(error.as_body(), status=error.status)
        return error_response(request, error)


class BodySizeLimitMiddleware:
    """413 before anything reads a body over the limit (Django would raise deep inside a view)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            error = ConvoyError(
                f"The request body is {length} bytes; the limit is {limit} bytes.",
                code="too_large",
            )
            if request.path.startswith("/api/"):
                return JsonResponse(error.as_body(), status=413)
            error.status = 413
            return error_response(request, error)
        return self.get_response(request)


class ErrorPageMiddleware:
    """Render refusals raised by page views: the styled page, or its fragment for htmx."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if request.path.startswith("/api/"):
            return None
        error = as_convoy_error(exc)
        if error is None:
            return None
        _denial_audited(request, error)
        return error_response(request, error)


def error_response(request: HttpRequest, error: ConvoyError) -> HttpResponse:
    htmx = getattr(request, "htmx", False)
    template = "errors/error.html#error" if htmx else "errors/error.html"
    response = TemplateResponse(request, template, {"error": error}, status=error.status)
    if htmx:
        # htmx does not swap 4xx by default: say where the message goes.
        response["HX-Retarget"] = "#notices"
        response["HX-Reswap"] = "innerHTML"
    return response.render()
