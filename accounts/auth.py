"""API authentication: bearer tokens for programs (within their scope), the session (with CSRF)
for the browser; and django-axes' limit on wrong passwords, for web sign-ins and for the current
password on the password change form."""

from functools import wraps

from axes.backends import AxesStandaloneBackend
from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, JsonResponse
from ninja.security import HttpBearer, SessionAuth

from accounts.models import ApiToken
from accounts.roles import capability_require
from accounts.selectors import user_for_token
from core.errors import ConvoyError, PermissionDenied, Unauthenticated

READ_METHODS = ("GET", "HEAD")


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = user_for_token(raw=token)
        if user is not None:
            request.user = user  # the refusal below is audited as this user's, with the token
            token_scope_check(token=user._convoy_api_token, method=request.method)
        return user


def token_scope_check(*, token: ApiToken, method: str) -> None:
    """Refuse with 403 what the token's scope does not cover: a read token only reads."""
    if token.scope == ApiToken.Scope.READ and method not in READ_METHODS:
        raise PermissionDenied(
            f"This API token's scope is read: it may only GET and HEAD, not {method}. "
            "Make a token with scope write for changes.",
            capability="token_scope",
        )


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
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        try:
            token_user = TokenAuth()(request)
        except Unauthenticated as exc:  # a revoked or expired token: the API's 401, saying which
            return JsonResponse(exc.as_body(), status=401)
        if token_user is not None:
            return view(request, *args, **kwargs)
        error = ConvoyError(
            "Authentication required: sign in or send a valid API token.", code="unauthenticated"
        )
        if request.path.endswith(".json"):
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


# A wrong current password on the password change form counts as a wrong sign-in for that
# username from that address: one count, so a stolen session cannot guess the password five
# times here and five more at sign-in.


def password_guesses_paused(request: HttpRequest, *, user: User) -> bool:
    """Has django-axes paused passwords for this user from this address (sign-in's limit)?"""
    return AxesProxyHandler.is_locked(request, {"username": user.username})


def password_guess_failed(request: HttpRequest, *, user: User) -> None:
    """Count a wrong current password; the one reaching the limit pauses this user from this
    address, and AxesMiddleware answers it with the lockout page (429), as at sign-in."""
    AxesProxyHandler.user_login_failed(
        sender=password_guess_failed, credentials={"username": user.username}, request=request
    )
