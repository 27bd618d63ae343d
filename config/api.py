"""The REST API root at /api/v1/: one NinjaAPI mounting each app's routers under its prefix.

Each app's `api.py` exports `ROUTERS`, a list of `(prefix, Router)`; errors are mapped once in
`config/errors.py`, so every route answers failures with the same body.
"""

from ninja import NinjaAPI

from accounts.api import ROUTERS as accounts_routers
from accounts.auth import api_auth, api_docs_for_users
from agents.api import ROUTERS as agents_routers
from audit.api import ROUTERS as audit_routers
from campaigns.api import ROUTERS as campaigns_routers
from config.errors import TextCheckingParser, api_errors_install
from core.schemas import ErrorOut
from review.api import ROUTERS as review_routers
from sandboxes.api import ROUTERS as sandboxes_routers

# Statuses any route can answer through the central error mapping (config/errors.py): no or a
# bad token, a role refusal, an unknown object, a body over the size limit, invalid input, the
# audit trail unavailable. Documented on every operation unless the route states its own.
COMMON_ERRORS = {
    "400": "The request body could not be parsed",
    "401": "Authentication required",
    "403": "Your role does not allow this",
    "404": "No such object (or not visible to you)",
    "413": "Request body too large",
    "422": "Invalid input; `errors` names each field",
    "503": "Not done: the audit trail could not record it",
}


class ConvoyAPI(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        schema = super().get_openapi_schema(*args, **kwargs)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error.pop("$defs", {}))
        components["ErrorOut"] = error
        ref = {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        }
        for operations in schema["paths"].values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status, description in COMMON_ERRORS.items():
                    if status not in responses and int(status) not in responses:
                        responses[int(status)] = {"description": description, **ref}
        return schema


api = ConvoyAPI(
    title="Convoy API",
    version="1",
    description="Code-migration campaigns run in sandboxes. Authenticate with a session "
    "(browser, CSRF enforced) or `Authorization: Bearer <token>` from `manage.py create_token`. "
    'Every error answers `{"detail", "code", "errors": [{"field", "message"}]}`.',
    auth=api_auth,
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
    docs_decorator=api_docs_for_users,
    parser=TextCheckingParser(),
)
api_errors_install(api)

for prefix, router in [
    *accounts_routers,
    *agents_routers,
    *audit_routers,
    *campaigns_routers,
    *review_routers,
    *sandboxes_routers,
]:
    api.add_router(prefix, router)
