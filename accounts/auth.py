"""API authentication: bearer tokens for programs, the session (with CSRF) for the browser; and
the sign-in backend that applies django-axes' limit to web sign-ins."""

from functools import wraps

from axes.backends import AxesStandaloneBackend
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, JsonResponse
from ninja.security import HttpBearer, SessionAuth

from accounts.roles import capability_require
from accounts.selectors import user_for_token
from core.errors import ConvoyError


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = user_for_token(raw=token)
        if user is not None:
            request.user = user
        return user


class BrowserSessionAuth(SessionAuth):
    """Session auth that only applies when no Authorization header was sent."""

    def __call__(self, request: HttpRequest):
        if "HTTP_AUTHORIZATION" in request.META:
            return None
        return super().__call__(request)


api_auth = [TokenAuth(), BrowserSessionAuth(csrf=True)]


def api_docs_for_users(view):
    """ninja's `docs_decorator`: the docs page and the OpenAPI document for signed-in people and
    token holders only (they were public, a map of every route for anyone). A visitor is sent to
    sign in from the page; the document, read by programs, answers 401 as the API does."""

    @wraps(view)
    def for_users(request: HttpRequest, *args, **kwargs):
        if request.user.is_authenticated or TokenAuth()(request) is not None:
            return view(request, *args, **kwargs)
        if request.path.endswith(".json"):
            error = ConvoyError(
                "Authentication required: sign in or send a valid API token.",
                code="unauthenticated",
            )
            return JsonResponse(error.as_body(), status=401)
        return redirect_to_login(request.get_full_path())

    return for_users


def require_capability(request: HttpRequest, capability: str) -> None:
    """Refuse with 403 when the API caller lacks a capability (audited by config/errors.py)."""
    capability_require(user=request.auth, capability=capability)


class SignInLimitBackend(AxesStandaloneBackend):
    """django-axes' check on web sign-ins. Calls without a request (management commands that
    check a password) have no address to count against and go straight to ModelBackend."""

    def authenticate(self, request=None, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
