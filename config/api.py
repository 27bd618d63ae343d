"""The REST API root at /api/v1/: one NinjaAPI mounting each app's router."""

from ninja import NinjaAPI
from ninja.errors import AuthenticationError

from accounts.api import router as accounts_router
from accounts.auth import api_auth
from audit.api import router as audit_router
from audit.services import AuditWriteError
from campaigns.api import router as campaigns_router
from review.api import router as review_router

api = NinjaAPI(
    title="Convoy API",
    version="1",
    description="Code-migration campaigns run in sandboxes. Authenticate with a session "
    "(browser, CSRF enforced) or `Authorization: Bearer <token>` from `manage.py create_token`.",
    auth=api_auth,
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    return api.create_response(
        request, {"detail": "Authentication required: send a valid API token."}, status=401
    )


@api.exception_handler(AuditWriteError)
def _audit_failed(request, exc):
    # Fail closed: the change was rolled back because its audit event could not be written.
    return api.create_response(
        request,
        {"detail": "The change was not made: the audit trail could not record it. Try again."},
        status=503,
    )


api.add_router("/", accounts_router)
api.add_router("/audit", audit_router)
api.add_router("/", campaigns_router)
api.add_router("/", review_router)
