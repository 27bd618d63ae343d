"""Bad input gets a 4xx with a clear message, never a server error: oversized bodies,
Unicode digits in ids, integers past 64 bits in bulk id lists, enormous token names."""

import json

import pytest

from accounts.services import token_create
from tests.factories import campaign_make, patch_for, run_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")


def _auth(user) -> dict:
    _token, raw = token_create(user=user, name="t", scope="write")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_a_body_over_the_limit_is_413_on_the_api_and_on_pages(client, manager, settings):
    big = b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    api = client.post("/api/v1/campaigns", big, content_type="application/json", **_auth(manager))
    assert api.status_code == 413
    assert api.json()["code"] == "too_large" and "limit" in api.json()["detail"]
    client.force_login(manager)
    page = client.post("/campaigns/new/", big, content_type="application/x-www-form-urlencoded")
    assert page.status_code == 413
    assert "limit" in page.content.decode()


@pytest.mark.parametrize(
    "raw", ["%C2%B3", "%D9%A1%D9%A2", "%EF%BC%91", "1%C2%B2", "-1", "1e3", "9" * 30]
)
def test_unicode_digits_and_odd_numbers_in_ids_are_4xx(client, manager, raw):
    campaign = campaign_make(owner=manager)
    headers = _auth(manager)
    client.force_login(manager)
    for path in (
        f"/api/v1/campaigns/{raw}",
        f"/api/v1/campaigns/{campaign.pk}/runs/{raw}",
        f"/api/v1/review/campaigns/{raw}/runs/1",
        f"/api/v1/sandboxes/{raw}",
        f"/api/v1/tokens/{raw}",
        f"/campaigns/{raw}/",
        f"/campaigns/{campaign.pk}/runs/{raw}/",
    ):
        method = client.delete if path.startswith("/api/v1/tokens/") else client.get
        response = method(path, **headers)
        assert 400 <= response.status_code < 500, (path, response.status_code)


@pytest.mark.parametrize("run_id", [2**63, 10**30, -(2**63) - 1])
def test_huge_integers_in_bulk_approve_ids_are_422(client, reviewer, manager, run_id):
    campaign = campaign_make(owner=manager)
    body = {"group_key": "0" * 64, "variant_name": "a", "run_ids": [1, run_id]}
    response = client.post(
        f"/api/v1/review/campaigns/{campaign.pk}/bulk-approve",
        json.dumps(body),
        content_type="application/json",
        **_auth(reviewer),
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"].startswith("run_ids")


def test_a_two_megabyte_token_name_is_422(client, manager):
    body = json.dumps({"name": "n" * (2 * 1024 * 1024)})
    response = client.post(
        "/api/v1/tokens", body, content_type="application/json", **_auth(manager)
    )
    assert response.status_code == 422, response.status_code
    assert response.json()["errors"][0]["field"] == "name"


@pytest.mark.parametrize("variant", [1.5, 2.0, True, [1], {"id": 1}])
def test_a_variant_that_is_neither_id_nor_name_is_422_naming_variant(
    client, reviewer, manager, variant
):
    """A float was refused as `variant.int` and `variant.str`: fields nobody sent."""
    campaign = campaign_make(owner=manager, variants=("a",))
    run = run_make(campaign=campaign)
    a = variant_make(run=run, name="a", patch=patch_for("x.py", "1", "2"))
    url = f"/api/v1/review/campaigns/{campaign.pk}/runs/{run.pk}"
    headers = _auth(reviewer)
    for action, extra in (("pick", {}), ("approve", {"publish_hash": "0" * 64})):
        response = client.post(
            f"{url}/{action}",
            json.dumps({"variant": variant, "diff_hash": a.diff_sha256, **extra}),
            content_type="application/json",
            **headers,
        )
        assert response.status_code == 422, response.content
        assert response.json()["errors"] == [
            {
                "field": "variant",
                "message": "must be a variant's id (a whole number) or its name (text)",
            }
        ]
    assert client.get(url, **headers).json()["state"] == "unreviewed"
