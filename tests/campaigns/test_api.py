"""The campaigns REST API as a client sees it: create, list, detail, launch, runs, permissions."""

import pytest

from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import Campaign, CampaignState, RepoRun, Repository, RunState
from tests.factories import repos_make, spec_for

pytestmark = pytest.mark.shapes("embedded", "production")


def _bearer(user) -> dict:
    _token, raw = token_create(user=user, name="test", scope="write")
    return {"Authorization": f"Bearer {raw}"}


def test_create_from_yaml_then_detail_and_list(client, manager):
    tag, _ = repos_make(2)
    headers = _bearer(manager)
    response = client.post(
        "/api/v1/campaigns",
        {"yaml": spec_for(tag, name="cleanup")},
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "cleanup" and body["state"] == "draft"
    assert body["variants"] == ["conservative", "standard", "aggressive"]
    detail = client.get(f"/api/v1/campaigns/{body['id']}", headers=headers).json()
    assert detail["counts"]["total"] == 0
    assert detail["spec"]["files"]["fix.py"].startswith("import pathlib")
    listed = client.get("/api/v1/campaigns", headers=headers).json()
    assert [c["name"] for c in listed] == ["cleanup"]
    assert AuditEvent.objects.filter(action="campaign.campaign.created").count() == 1


def test_create_from_json_spec_with_field_errors_is_422(client, manager):
    response = client.post(
        "/api/v1/campaigns",
        {"spec": {"name": "Bad Name", "repos": [], "transform": {"run": 5}, "colour": "red"}},
        content_type="application/json",
        headers=_bearer(manager),
    )
    assert response.status_code == 422
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert errors["name"].startswith("must be a slug")
    assert errors["repos"] == "must list at least one repository"
    assert errors["transform.run"] == "must be a string, got an integer"
    assert errors["colour"].startswith("unknown key")
    assert not Campaign.objects.exists()


def test_a_key_named_twice_in_a_spec_is_422_naming_it(client, manager):
    """A spec sent as a JSON object (or as JSON text) kept the last of two values silently."""
    tag, _ = repos_make(1)
    headers = _bearer(manager)
    body = (
        '{"spec": {"name": "twice", "repos": {"tag": "TAG"}, "transform": [{"run": "true"}],'
        ' "name": "again"}}'
    ).replace("TAG", tag)
    response = client.post(
        "/api/v1/campaigns", body, content_type="application/json", headers=headers
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"] == [
        {"field": "spec.name", "message": "spec.name: duplicate key"}
    ]
    text = '{"name": "twice", "repos": {"tag": "TAG"}, "transform": [{"run": "a", "run": "b"}]}'
    response = client.post(
        "/api/v1/campaigns",
        {"yaml": text.replace("TAG", tag)},
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "transform[0].run"
    assert "duplicate key" in response.json()["errors"][0]["message"]
    assert not Campaign.objects.exists()


def test_launch_creates_runs_and_counts_them_then_filters(
    client, manager, django_capture_on_commit_callbacks
):
    tag, _ = repos_make(3)
    headers = _bearer(manager)
    created = client.post(
        "/api/v1/campaigns",
        {"yaml": spec_for(tag, name="cleanup", max_parallel=1)},
        content_type="application/json",
        headers=headers,
    ).json()
    # No worker in this test: the dispatcher queues one run (max_parallel 1), the rest wait.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/campaigns/{created['id']}/launch", headers=headers)
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "running"
    body = client.get(f"/api/v1/campaigns/{created['id']}", headers=headers).json()
    assert body["counts"]["total"] == 3
    assert body["runs"]["queued"] == 1 and body["runs"]["pending"] == 2
    runs = client.get(
        "/api/v1/campaigns/cleanup/runs", {"state": "pending"}, headers=headers
    ).json()
    assert runs["count"] == 2
    by_repo = client.get(
        "/api/v1/campaigns/cleanup/runs", {"repository": "service-01"}, headers=headers
    ).json()
    assert [r["repository"] for r in by_repo["items"]] == ["service-01"]
    run_id = by_repo["items"][0]["id"]
    detail = client.get(f"/api/v1/campaigns/cleanup/runs/{run_id}", headers=headers).json()
    assert detail["url"].startswith("file://") and detail["variants_detail"] == []
    again = client.post(f"/api/v1/campaigns/{created['id']}/launch", headers=headers)
    assert again.status_code == 409
    assert "only drafts can be launched" in again.json()["detail"]
    cancelled = client.post(f"/api/v1/campaigns/{created['id']}/cancel", headers=headers).json()
    assert cancelled["state"] == "cancelled" and cancelled["runs"]["cancelled"] == 3


def test_reviewer_token_on_manager_route_is_403_and_audited(client, manager, reviewer):
    tag, _ = repos_make(1)
    from campaigns.services import campaign_create

    campaign = campaign_create(actor=manager, source=spec_for(tag, name="cleanup"))
    response = client.post(f"/api/v1/campaigns/{campaign.pk}/launch", headers=_bearer(reviewer))
    assert response.status_code == 403
    assert "campaign manage" in response.json()["detail"]
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.DRAFT
    denied = AuditEvent.objects.get(action="people.permission.denied")
    assert denied.actor_display == "rob" and '"capability":"campaign_manage"' in denied.body
    # Reviewers still read campaigns.
    assert (
        client.get(f"/api/v1/campaigns/{campaign.pk}", headers=_bearer(reviewer)).status_code == 200
    )


def test_no_token_is_401_and_outsider_sees_nothing(client, manager, outsider):
    assert client.post("/api/v1/campaigns/1/launch").status_code == 401
    assert client.get("/api/v1/campaigns").status_code == 401
    tag, _ = repos_make(1)
    from campaigns.services import campaign_create

    campaign = campaign_create(actor=manager, source=spec_for(tag, name="cleanup"))
    assert client.get("/api/v1/campaigns", headers=_bearer(outsider)).json() == []
    assert (
        client.get(f"/api/v1/campaigns/{campaign.pk}", headers=_bearer(outsider)).status_code == 404
    )


def test_secrets_are_write_only_and_audited_by_name(client, admin_user, manager):
    headers = _bearer(admin_user)
    response = client.post(
        "/api/v1/secrets",
        {"name": "API_KEY", "value": "s3cr3t-value"},
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code == 201
    assert "s3cr3t-value" not in response.content.decode()
    client.post(
        "/api/v1/secrets",
        {"name": "API_KEY", "value": "rotated-value"},
        content_type="application/json",
        headers=headers,
    )
    listed = client.get("/api/v1/secrets", headers=headers)
    assert listed.json()[0]["name"] == "API_KEY" and "value" not in listed.json()[0]
    assert "rotated-value" not in listed.content.decode()
    events = AuditEvent.objects.filter(action__startswith="secret.secret.")
    assert [e.action for e in events] == ["secret.secret.created", "secret.secret.rotated"]
    assert all("value" not in e.body for e in events)
    assert client.get("/api/v1/secrets", headers=_bearer(manager)).status_code == 403
    from campaigns.models import Secret

    assert b"rotated-value" not in bytes(Secret.objects.get().ciphertext)
    from campaigns.secrets import secret_decrypt

    assert secret_decrypt(names=["API_KEY"]) == {"API_KEY": "rotated-value"}


def test_runs_are_one_per_repository(manager, django_capture_on_commit_callbacks):
    from campaigns.services import campaign_create, campaign_launch

    tag, _ = repos_make(2)
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="cleanup"))
    with django_capture_on_commit_callbacks(execute=True):
        campaign_launch(campaign=campaign, actor=manager)
    assert RepoRun.objects.filter(campaign=campaign).count() == 2
    # max_parallel counts sandboxes: the first run (three variants) is queued, the other waits
    states = list(RepoRun.objects.order_by("id").values_list("state", flat=True))
    assert states == [RunState.QUEUED, RunState.PENDING]


def test_retry_takes_the_signature_from_a_json_body_the_query_or_neither(client, manager):
    from campaigns.services import campaign_create

    tag, _ = repos_make(3)
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="cleanup"))
    headers = _bearer(manager)
    draft = client.post(f"/api/v1/campaigns/{campaign.pk}/retry", headers=headers)
    assert draft.status_code == 409 and draft.json()["code"] == "conflict"
    Campaign.objects.filter(pk=campaign.pk).update(state=CampaignState.COMPLETED)
    for signature, repo in zip(["aaa", "bbb", "ccc"], Repository.objects.all(), strict=True):
        RepoRun.objects.create(
            campaign=campaign,
            repository=repo,
            ref="main",
            state=RunState.FAILED,
            error_signature=signature,
        )
    url = f"/api/v1/campaigns/{campaign.pk}/retry"
    body = client.post(url, {"signature": "aaa"}, content_type="application/json", headers=headers)
    assert body.status_code == 200, body.content
    assert body.json()["retried"] == 1
    query = client.post(f"{url}?signature=bbb", headers=headers)
    assert query.status_code == 200 and query.json()["retried"] == 1
    rest = client.post(url, headers=headers)
    assert rest.status_code == 200 and rest.json()["retried"] == 1
    bad = client.post(url, "not json", content_type="application/json", headers=headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "signature"


def test_registering_a_repository_is_audited_once(client, manager, settings):
    """A registration is a state change like any other: the URLs it added are one event with
    who added them (a known URL adds nothing, and records nothing)."""
    import json
    import uuid
    from pathlib import Path

    from campaigns.demo import demo_repos_create

    (repo,) = demo_repos_create(Path(settings.REPO_ROOTS[0]) / uuid.uuid4().hex[:8], 1)
    body = {"url": f"file://{repo}", "tags": ["infra"]}
    for _ in range(2):
        response = client.post(
            "/api/v1/repositories", body, content_type="application/json", headers=_bearer(manager)
        )
        assert response.status_code == 201, response.content
    (event,) = AuditEvent.objects.filter(action="campaign.repository.registered")
    assert event.actor_id == str(manager.pk)
    assert json.loads(event.body)["payload"] == {
        "urls": [f"file://{repo}"],
        "tags": ["infra"],
        "tags_created": ["infra"],  # the first registration under it: now the manager's
    }
    assert Repository.objects.filter(url=f"file://{repo}").count() == 1


def test_only_a_tags_owner_or_an_admin_adds_repositories_to_it(
    client, manager, admin_user, settings
):
    """A campaign's `repos: {tag: NAME}` runs every repository under the tag with the
    campaign's secrets: another manager registering their repository under it would have had
    their code run there. The first to register under a tag owns it."""
    import uuid
    from pathlib import Path

    from campaigns.demo import demo_repos_create
    from campaigns.models import RepositoryTag
    from tests.factories import user_make

    mallory = user_make(role="manager", username="mallory")
    paths = demo_repos_create(Path(settings.REPO_ROOTS[0]) / uuid.uuid4().hex[:8], 4)
    urls = [f"file://{p}" for p in paths]

    def register(user, url, tags):
        return client.post(
            "/api/v1/repositories",
            {"url": url, "tags": tags},
            content_type="application/json",
            headers=_bearer(user),
        )

    assert register(manager, urls[0], ["payments"]).status_code == 201
    assert RepositoryTag.objects.get(name="payments").owner == manager
    refused = register(mallory, urls[1], ["own", "payments"])
    assert refused.status_code == 403, refused.content
    assert refused.json()["errors"] == [{"field": "tags[1]", "message": refused.json()["detail"]}]
    assert "mia" in refused.json()["detail"]
    # Nothing of the refused registration was kept: no repository, no tag.
    assert not Repository.objects.filter(url=urls[1]).exists()
    assert not RepositoryTag.objects.filter(name="own").exists()
    assert register(manager, urls[2], ["payments"]).status_code == 201
    assert register(admin_user, urls[3], ["payments"]).status_code == 201
    members = Repository.objects.filter(url__in=urls).values_list("url", flat=True)
    assert sorted(members) == sorted([urls[0], urls[2], urls[3]])
    bad = register(manager, urls[1], ["ok", "no spaces"])
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "tags[1]"


def test_a_ref_that_git_would_read_as_an_option_is_refused(client, manager, settings):
    """`ref: --upload-pack=…` was accepted at registration and in a spec's tag form; git
    absorbed it downstream, but it is refused where it comes in."""
    import uuid
    from pathlib import Path

    from campaigns.demo import demo_repos_create
    from campaigns.spec import CampaignSpecError, spec_parse

    (repo,) = demo_repos_create(Path(settings.REPO_ROOTS[0]) / uuid.uuid4().hex[:8], 1)
    body = {"url": f"file://{repo}", "ref": "--upload-pack=touch /tmp/x", "tags": ["t"]}
    response = client.post(
        "/api/v1/repositories", body, content_type="application/json", headers=_bearer(manager)
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "ref"
    assert not Repository.objects.filter(url=f"file://{repo}").exists()
    with pytest.raises(CampaignSpecError) as refused:
        spec_parse(spec_for("t", name="x").replace("repos: {tag: t}", "repos: {tag: t, ref: -x}"))
    assert refused.value.errors[0].path == "repos.ref"


def test_a_draft_edit_records_what_changed_in_its_spec(manager):
    """A draft keeps no revisions and any manager may edit one: the update's event holds the
    spec's hashes before and after and the line-by-line difference."""
    import json

    from campaigns.services import campaign_create, campaign_update
    from tests.factories import user_make

    tag, _ = repos_make(1)
    draft = campaign_create(actor=manager, source=spec_for(tag, name="d"))
    bob = user_make(role="manager", username="bob")
    edited = spec_for(tag, name="d").replace("--style $STYLE", "--style $STYLE && curl evil")
    campaign_update(campaign=draft, actor=bob, source=edited)
    (event,) = AuditEvent.objects.filter(action="campaign.campaign.updated")
    body = json.loads(event.body)
    assert body["actor"]["display"] == "bob"
    before, after = body["changes"]["spec"]
    assert before != after and len(after) == 64
    assert "+" in body["payload"]["spec_diff"] and "curl evil" in body["payload"]["spec_diff"]
