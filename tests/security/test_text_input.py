"""Text no column can store (NUL, which PostgreSQL refuses, and lone surrogates, which UTF-8
cannot encode) is a 4xx naming the field on every route, never a server error or a write half
done: JSON bodies are 422 with the field's path, query, form and path parameters 400."""

import json

import pytest

from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import Campaign, Repository, Secret, SecretGrant
from review.models import Decision
from tests.factories import campaign_make, run_make

pytestmark = pytest.mark.shapes("embedded", "production")

SPEC = {"name": "x", "repos": [{"url": "file:///nowhere/x.git"}], "transform": "true"}


@pytest.fixture
def world(db, manager, reviewer, admin_user):
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign)
    tokens = {}
    for role, user in (("manager", manager), ("reviewer", reviewer), ("admin", admin_user)):
        _token, raw = token_create(user=user, name="t", scope="write")
        tokens[role] = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    return {"campaign": campaign, "run": run, "tokens": tokens}


def _run_path(world, action: str) -> str:
    return f"/api/v1/review/campaigns/{world['campaign'].pk}/runs/{world['run'].pk}/{action}"


JSON_WRITES = [
    # (role, path, body, field named)
    ("manager", "/api/v1/campaigns", {"spec": {**SPEC, "description": "a\0b"}}, "spec.description"),
    ("manager", "/api/v1/campaigns", {"spec": {**SPEC, "transform": "a\0b"}}, "spec.transform"),
    (
        "manager",
        "/api/v1/campaigns",
        {"spec": {**SPEC, "variants": [{"name": "v", "env": {"A": "\ud800"}}]}},
        "spec.variants[0].env.A",
    ),
    ("manager", "/api/v1/campaigns", {"spec": {**SPEC, "files": {"f": "\0"}}}, "spec.files.f"),
    ("manager", "/api/v1/repositories", {"url": "file:///x", "ref": "a\0"}, "ref"),
    ("manager", "/api/v1/repositories", {"url": "file:///x", "tags": ["t\0"]}, "tags[0]"),
    ("manager", "/api/v1/repositories", {"url": "https://ex\ud800mple.com/x"}, "url"),
    ("reviewer", "reject", {"comment": "x\u0000"}, "comment"),
    ("reviewer", "pick", {"variant": "a\u0000", "diff_hash": "0" * 64}, "variant"),
    (
        "reviewer",
        "bulk-approve",
        {"group_key": "\0" * 64, "variant_name": "a", "run_ids": [1]},
        "group_key",
    ),
    (
        "reviewer",
        "bulk-approve",
        {"group_key": "0" * 64, "variant_name": "a\0", "run_ids": [1]},
        "variant_name",
    ),
    ("admin", "/api/v1/secret-grants", {"name": "A\0"}, "name"),
    ("admin", "/api/v1/secret-grants", {"name": "A", "manager": "mia\0"}, "manager"),
    ("admin", "/api/v1/secrets", {"name": "A", "value": "\ud800"}, "value"),
    ("admin", "/api/v1/secrets", {"name": "A", "value": "a\0b"}, "value"),
    ("manager", "retry", {"signature": "a\0"}, "signature"),
]


@pytest.mark.parametrize("role,path,body,field", JSON_WRITES)
def test_nul_or_a_surrogate_in_a_json_body_is_422_naming_the_field(
    client, world, role, path, body, field
):
    campaign = world["campaign"]
    if path in ("reject", "pick"):
        path = _run_path(world, path)
    elif path == "bulk-approve":
        path = f"/api/v1/review/campaigns/{campaign.pk}/bulk-approve"
    elif path == "retry":
        path = f"/api/v1/campaigns/{campaign.pk}/retry"
    before = AuditEvent.objects.count()
    response = client.post(
        path, json.dumps(body), content_type="application/json", **world["tokens"][role]
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == field
    # Nothing written: no row, no event.
    assert AuditEvent.objects.count() == before
    assert Campaign.objects.count() == 1 and Repository.objects.count() == 1
    assert not Secret.objects.exists() and not SecretGrant.objects.exists()
    assert not Decision.objects.exists()


@pytest.mark.parametrize(
    "source,field",
    [
        (
            'name: x\ndescription: "a\\0b"\nrepos: [file:///nowhere/x.git]\ntransform: "true"\n',
            "description",
        ),
        ('name: x\nrepos: [file:///nowhere/x.git]\ntransform: "a\\ud800"\n', "transform"),
        (
            'name: x\nrepos: [{url: file:///nowhere/x.git, ref: "m\\0"}]\ntransform: t\n',
            "repos[0].ref",
        ),
    ],
)
def test_nul_or_a_surrogate_written_as_a_yaml_escape_is_422_naming_the_field(
    client, world, source, field
):
    response = client.post(
        "/api/v1/campaigns",
        json.dumps({"yaml": source}),
        content_type="application/json",
        **world["tokens"]["manager"],
    )
    assert response.status_code == 422, response.content
    assert field in [e["field"] for e in response.json()["errors"]]
    assert Campaign.objects.count() == 1


def test_an_export_with_nul_in_its_query_is_refused_before_it_is_recorded(client, world):
    """It answered 200, recorded the export, then broke off after the first chunk."""
    response = client.post(
        "/api/v1/audit/exports",
        json.dumps({"format": "csv", "q": "\u0000"}),
        content_type="application/json",
        **world["tokens"]["admin"],
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "q"
    assert not AuditEvent.objects.filter(action__startswith="audit.export").exists()


def test_an_audit_filter_with_nul_is_refused_by_the_filter_itself(world):
    """The filter parser is the service every audit route and page uses: it refuses too."""
    from audit.selectors import AuditFilterError, audit_query_parse

    with pytest.raises(AuditFilterError) as refused:
        audit_query_parse(text="actor:\0")
    assert refused.value.field == "q"


API_READS = [
    # (path with {c} for the campaign id, query, field named)
    ("/api/v1/campaigns", {"state": "\0"}, "state"),
    ("/api/v1/campaigns/%00", {}, "path"),
    ("/api/v1/campaigns/{c}/runs", {"state": "\0"}, "state"),
    ("/api/v1/campaigns/{c}/runs", {"signature": "\0"}, "signature"),
    ("/api/v1/campaigns/{c}/runs", {"repository": "\0"}, "repository"),
    ("/api/v1/repositories", {"tag": "\0"}, "tag"),
    ("/api/v1/review/campaigns/{c}/changesets", {"state": "\0"}, "state"),
    ("/api/v1/audit/events", {"q": "\0"}, "q"),
    ("/api/v1/audit/events", {"q": "actor:\0"}, "q"),
    ("/api/v1/audit/events", {"q": "action:\0"}, "q"),
]


@pytest.mark.parametrize("path,query,field", API_READS)
def test_nul_in_an_api_query_or_path_is_400_naming_the_parameter(client, world, path, query, field):
    path = path.format(c=world["campaign"].pk)
    response = client.get(path, query, **world["tokens"]["admin"])
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == field


def test_nul_in_the_retry_query_is_400_and_retries_nothing(client, world):
    campaign = world["campaign"]
    response = client.post(
        f"/api/v1/campaigns/{campaign.pk}/retry?signature=a%00", **world["tokens"]["manager"]
    )
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == "signature"


PAGES = [
    # (method, path, data, field named)
    ("get", "/campaigns/", {"q": "\0"}, "q"),
    ("get", "/campaigns/{c}/", {"state": "\0"}, "state"),
    ("get", "/campaigns/{c}/", {"signature": "\0"}, "signature"),
    ("get", "/campaigns/%00/", {}, "path"),
    ("get", "/sandboxes/", {"q": "\0"}, "q"),
    ("post", "/campaigns/validate/", {"campaign": "\x00"}, "campaign"),
    ("post", "/campaigns/new/", {"name": "x", "transform": "a\0b"}, "transform"),
    ("post", "/campaigns/{c}/runs/{r}/pick/", {"variant": "a\0"}, "variant"),
    ("post", "/campaigns/{c}/runs/{r}/reject/", {"comment": "x\0"}, "comment"),
    (
        "post",
        "/campaigns/{c}/review/bulk/approve/",
        {"group_key": "\0", "variant_name": "a\0"},
        "group_key",
    ),
]


@pytest.mark.parametrize("method,path,data,field", PAGES)
def test_nul_in_a_page_parameter_is_400_naming_it(
    client, world, manager, method, path, data, field
):
    client.force_login(manager)
    path = path.format(c=world["campaign"].pk, r=world["run"].pk)
    before = AuditEvent.objects.count()
    response = getattr(client, method)(path, data)
    assert response.status_code == 400, response.status_code
    assert f"<code>{field}</code>" in response.content.decode()
    assert AuditEvent.objects.count() == before
    assert not Decision.objects.exists() and Campaign.objects.count() == 1
