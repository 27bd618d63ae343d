"""The REST API root at /api/v1/: one NinjaAPI mounting each app's routers under its prefix.

Each app's `api.py` exports `ROUTERS`, a list of `(prefix, Router)`; errors are mapped once in
`config/errors.py`, so every route answers failures with the same body.
"""

from ninja import NinjaAPI

from accounts.api import ROUTERS as accounts_routers
from accounts.auth import api_auth
from audit.api import ROUTERS as audit_routers
from campaigns.api import ROUTERS as campaigns_routers
from config.errors import api_errors_install
from review.api import ROUTERS as review_routers

api = NinjaAPI(
    title="Convoy API",
    version="1",
    description="Code-migration campaigns run in sandboxes. Authenticate with a session "
    "(browser, CSRF enforced) or `Authorization: Bearer <token>` from `manage.py create_token`. "
    'Every error answers `{"detail", "code", "errors": [{"field", "message"}]}`.',
    auth=api_auth,
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
api_errors_install(api)

for prefix, router in [*accounts_routers, *audit_routers, *campaigns_routers, *review_routers]:
    api.add_router(prefix, router)
