"""Schemathesis over the whole OpenAPI document: no input gives a server error, and every
response matches the schema the document states (status codes and bodies)."""

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from accounts.services import token_create
from config.api import api
from tests.factories import user_make

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.slow]

EXAMPLES_PER_OPERATION = 15
CASES = {"run": 0, "server_errors": 0}


def not_a_server_error(ctx, response, case):
    if response.status_code >= 500:
        CASES["server_errors"] += 1
        raise AssertionError(f"{case.method} {case.formatted_path}: {response.status_code}")


@pytest.fixture
def wsgi_app(db):
    # As Django's test client does: the test's transaction must outlive each request.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture(scope="module", autouse=True)
def _cases_reported(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"schemathesis: {CASES['run']} API cases run, {CASES['server_errors']} server errors"
        )


schema = schemathesis.openapi.from_dict(api.get_openapi_schema(path_prefix="/api/v1"))


@pytest.fixture
def bearers(db):
    """A manager's and an admin's token: each case is sent with both."""
    headers = []
    for role in ("manager", "admin"):
        _, raw = token_create(
            user=user_make(role=role, username=f"fuzz-{role}"), name="fuzz", scope="write"
        )
        headers.append({"Authorization": f"Bearer {raw}"})
    return headers


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_input_gives_a_server_error_or_an_undocumented_response(case, bearers, wsgi_app):
    for headers in bearers:
        CASES["run"] += 1
        case.call_and_validate(
            app=wsgi_app,
            headers=headers,
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        )
