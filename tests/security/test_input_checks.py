"""Input the robustness audit found crashing or misread: each is now a 4xx naming the field
(branch names, diff excludes, huge numbers, odd URLs, malformed retry bodies, offsets, audit
cursors, names ending in a newline, secret values), and nothing is written."""

import json

import pytest

from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import Campaign, RepoRun, Repository, RunState, Secret
from campaigns.spec import CampaignSpecError, spec_parse, spec_validate
from tests.factories import campaign_make, run_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")

SPEC = {"name": "x", "repos": {"tag": "t"}, "transform": "true"}


def _auth(user) -> dict:
    _token, raw = token_create(user=user, name="t", scope="write")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _post(client, path, body, user, content_type="application/json"):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, data, content_type=content_type, **_auth(user))


def _spec_errors(**fields) -> dict[str, str]:
    with pytest.raises(CampaignSpecError) as refused:
        spec_validate({**SPEC, **fields})
    return {e.path: e.message for e in refused.value.errors}


# --- changeset.branch ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "branch",
    [
        "b" * 251,  # Changeset.branch is 250: publishing crashed on the insert
        "../..//x y",  # failed only at push
        "-x",
        "a..b",
        "a/.hidden",
        "a.lock",
        "a/",
        "/a",
        "a//b",
        "a.",
        "a@{1}",
        "a~1",
        "a^",
        "a:b",
        "a?b",
        "a*b",
        "a[b",
        "a\\b",
        "a\nb",
        "@",
        "HEAD",
    ],
)
def test_a_branch_git_would_refuse_is_refused_in_the_spec(db, branch):
    errors = _spec_errors(changeset={"branch": branch})
    assert "changeset.branch" in errors, errors


@pytest.mark.parametrize("branch", ["convoy/fix-1", "feature/a.b_c", "b" * 250, "ü/x"])
def test_a_good_branch_is_accepted(db, branch):
    assert spec_validate({**SPEC, "changeset": {"branch": branch}})["changeset"]["branch"] == branch


def test_a_long_branch_through_the_api_is_422_and_no_campaign(client, manager):
    response = _post(
        client, "/api/v1/campaigns", {"spec": {**SPEC, "changeset": {"branch": "b" * 300}}}, manager
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "changeset.branch"
    assert not Campaign.objects.exists()


# --- the spec checker's misreads and crashes --------------------------------------------------


@pytest.mark.parametrize("exclude", [5, "*.lock", {"*.lock": True}, True])
def test_diff_exclude_must_be_a_list(db, exclude):
    """`exclude: "*.lock"` was read letter by letter: `*` excluded every file, every diff empty."""
    errors = _spec_errors(diff={"exclude": exclude})
    assert "must be a list" in errors["diff.exclude"]


def test_a_list_of_excludes_is_kept(db):
    spec = spec_validate({**SPEC, "diff": {"exclude": ["*.lock", "dist/"]}})
    assert spec["diff"]["exclude"] == ["*.lock", "dist/"]


def test_a_yaml_integer_past_pythons_digit_limit_is_422_naming_the_field(db):
    text = f"name: x\nrepos: [file:///nowhere/x.git]\ntransform: t\nmax_parallel: {'9' * 5000}\n"
    with pytest.raises(CampaignSpecError) as refused:
        spec_parse(text)
    (error,) = refused.value.errors
    assert error.path == "max_parallel" and error.line == 4


def test_a_port_of_five_thousand_digits_is_422_naming_the_entry(db):
    errors = _spec_errors(network={"allow": ["a.example.com:" + "1" * 5000]})
    assert "port" in errors["network.allow[0]"]


@pytest.mark.parametrize(
    "fields,path",
    [
        ({"name": "x\n"}, "name"),
        ({"variants": [{"name": "a\n"}]}, "variants[0].name"),
        ({"files": {"f.py\n": "x"}}, "files.f.py\n"),
        ({"variants": [{"name": "a", "env": {"A\n": "1"}}]}, "variants[0].env.A\n"),
        ({"secrets": ["A\n"]}, "secrets[0]"),
    ],
)
def test_names_ending_in_a_newline_are_refused(db, fields, path):
    """`$` matches before a trailing newline: `name: "x\\n"` passed as a slug."""
    assert path in _spec_errors(**fields)


def test_a_campaign_name_ending_in_a_newline_through_the_api_is_422(client, manager):
    response = _post(client, "/api/v1/campaigns", {"spec": {**SPEC, "name": "x\n"}}, manager)
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "name"
    assert not Campaign.objects.exists()


# --- POST /repositories -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,field",
    [
        ({"url": "https://[::1"}, "url"),
        ({"url": "https://[::1]:x/a.git"}, "url"),
        ({"url": "https://example.com/" + "a" * 1000}, "url"),
        ({"url": "https://example.com/a.git", "ref": "r" * 201}, "ref"),
        ({"url": "https://example.com/a.git", "tags": [f"t{i}" for i in range(51)]}, "tags"),
        ({"url": "https://example.com/a.git", "tags": ["t" * 101]}, "tags[0]"),
    ],
)
def test_a_repository_the_columns_cannot_hold_is_422(client, manager, body, field):
    response = _post(client, "/api/v1/repositories", body, manager)
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == field
    assert not Repository.objects.exists()


# --- retry bodies ---------------------------------------------------------------------------


@pytest.fixture
def failed(manager):
    campaign = campaign_make(owner=manager)
    runs = []
    for signature in ("sigA", "sigB"):
        run = run_make(campaign=campaign, state=RunState.FAILED)
        RepoRun.objects.filter(pk=run.pk).update(error_signature=signature)
        runs.append(run)
    return campaign


@pytest.mark.parametrize(
    "body,content_type",
    [
        ('{"signatur": "sigA"}', "application/json"),
        ("[1]", "application/json"),
        ('"sigA"', "application/json"),
        ("{", "application/json"),
        ("sigA", "text/plain"),
        ("signatur=sigA", "application/x-www-form-urlencoded"),
    ],
)
def test_a_malformed_retry_body_retries_nothing(client, manager, failed, body, content_type):
    """Each was read as "no signature": every failed run retried."""
    response = _post(client, f"/api/v1/campaigns/{failed.pk}/retry", body, manager, content_type)
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "signature"
    assert RepoRun.objects.filter(campaign=failed, state=RunState.FAILED).count() == 2


def test_a_retry_with_a_signature_or_without_a_body_still_works(client, manager, failed):
    path = f"/api/v1/campaigns/{failed.pk}/retry"
    one = _post(client, path, {"signature": "sigA"}, manager)
    assert one.status_code == 200 and one.json()["retried"] == 1
    form = "signature=sigB"
    two = _post(client, path, form, manager, "application/x-www-form-urlencoded")
    assert two.status_code == 200 and two.json()["retried"] == 1
    RepoRun.objects.filter(campaign=failed).update(state=RunState.FAILED)
    rest = client.post(path, **_auth(manager))  # an empty (multipart) form: every failed run
    assert rest.status_code == 200 and rest.json()["retried"] == 2


# --- offsets, cursors, bodies ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/campaigns",
        "/api/v1/campaigns/{c}/runs",
        "/api/v1/repositories",
        "/api/v1/review/campaigns/{c}/changesets",
    ],
)
def test_an_offset_past_bigint_is_422_naming_it(client, manager, path):
    campaign = campaign_make(owner=manager)
    response = client.get(path.format(c=campaign.pk), {"offset": 2**63}, **_auth(manager))
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "offset"


@pytest.mark.parametrize("cursor", ["garbage", "9" * 30, "-1"])
def test_a_bad_audit_cursor_is_422_naming_cursor(client, admin_user, cursor):
    response = client.get("/api/v1/audit/events", {"cursor": cursor}, **_auth(admin_user))
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "cursor"


def test_a_filter_id_past_bigint_is_422_naming_q(client, admin_user):
    response = client.get(
        "/api/v1/audit/events", {"q": "campaign:" + "9" * 30}, **_auth(admin_user)
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "q"


def test_an_export_whose_filter_cannot_run_is_refused_before_it_is_recorded(client, admin_user):
    response = _post(
        client, "/api/v1/audit/exports", {"format": "csv", "q": "created:9999-12-31"}, admin_user
    )
    assert response.status_code == 422, response.content
    assert not AuditEvent.objects.filter(action__startswith="audit.export").exists()


def test_a_missing_body_is_named_body(client, admin_user):
    response = _post(client, "/api/v1/secrets", "", admin_user)
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "body"


# --- secret values --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a\x01b", "a\x1bb", "a\x7fb", "x" * (64 * 1024 + 1)])
def test_a_secret_value_with_control_characters_or_too_long_is_422(client, admin_user, value):
    response = _post(client, "/api/v1/secrets", {"name": "TOKEN", "value": value}, admin_user)
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "value"
    assert not Secret.objects.exists()


def test_a_multi_line_secret_is_stored(client, admin_user):
    value = "-----BEGIN KEY-----\r\nabc\tdef\r\n-----END KEY-----\n"
    response = _post(client, "/api/v1/secrets", {"name": "KEY", "value": value}, admin_user)
    assert response.status_code == 201, response.content


# --- downloads ------------------------------------------------------------------------------


def test_a_patch_download_names_its_file_safely(client, manager):
    """The header was built by hand: a quote or a non-Latin-1 letter in a name broke it."""
    campaign = campaign_make(owner=manager, variants=("ü",))
    run = run_make(campaign=campaign)
    variant = variant_make(run=run, name='ü"x', patch=b"diff --git a/a b/a\n")
    client.force_login(manager)
    response = client.get(f"/campaigns/{campaign.pk}/runs/{run.pk}/variants/{variant.pk}/patch/")
    assert response.status_code == 200
    header = response["Content-Disposition"]
    assert header.startswith("attachment; filename*=utf-8''"), header
    assert "%C3%BC%22x.patch" in header
