"""The OpenAPI document describes every response: a schema for each 2xx, one error shape."""

import pytest

from config.api import api

pytestmark = pytest.mark.shapes("embedded", "production")

ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def _operations():
    document = api.get_openapi_schema(path_prefix="/api/v1")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield f"{method.upper()} {path}", operation["responses"]


def test_every_success_response_has_a_schema():
    missing = [
        f"{name} {status}"
        for name, responses in _operations()
        for status, response in responses.items()
        if 200 <= int(status) < 300
        and int(status) != 204
        and not all("schema" in body for body in response.get("content", {"": {}}).values())
    ]
    assert missing == []


def test_every_error_response_has_the_same_shape():
    shapes = {
        f"{name} {status}": response.get("content", {}).get("application/json", {}).get("schema")
        for name, responses in _operations()
        for status, response in responses.items()
        if int(status) >= 400
    }
    assert shapes, "the document lists no error responses"
    assert {name: shape for name, shape in shapes.items() if shape != ERROR_REF} == {}
    statuses = {name.rsplit(" ", 1)[1] for name in shapes}
    assert {"403", "404", "422"} <= statuses
