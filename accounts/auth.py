"""API authentication: bearer tokens for programs, the session (with CSRF) for the browser; and
the sign-in backend that applies django-axes' limit to web sign-ins."""

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest
from ninja.security import HttpBearer, SessionAuth

from accounts.roles import capability_require
from accounts.selectors import user_for_token


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
