"""The review API: pick, approve, reject, bulk approve, publish and changesets over HTTP."""

import pytest

from accounts.services import token_create
from review.models import Changeset, RunReview
from review.publish_text import publish_text_for
from tests.factories import campaign_make, patch_for, run_make, variant_make, variant_rerun

pytestmark = pytest.mark.shapes("embedded", "production")


def _auth(user):
    _, raw = token_create(user=user, name="t", scope="write")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


@pytest.fixture
def setup(manager):
    campaign = campaign_make(owner=manager, variants=("a", "b"))
    run = run_make(campaign=campaign)
    a = variant_make(run=run, name="a", position=0, patch=patch_for("x.py", "1", "2"))
    b = variant_make(run=run, name="b", position=1, patch=patch_for("x.py", "1", "3"))
    return campaign, run, a, b


def _text(campaign):
    """The campaign's publish text hash, as a client reads it from the run's review."""
    return publish_text_for(campaign).sha256


def _url(campaign, run, action=""):
    url = f"/api/v1/review/campaigns/{campaign.pk}/runs/{run.pk}"
    return f"{url}/{action}" if action else url


def test_api_pick_approve_reject_with_hashes(client, reviewer, setup):
    campaign, run, a, b = setup
    h = _auth(reviewer)
    r = client.post(
        _url(campaign, run, "pick"),
        {"variant": "b", "diff_hash": b.diff_sha256},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 200 and r.json()["variant"] == "b" and r.json()["state"] == "picked"
    stale = a.diff_sha256
    variant_rerun(a, patch_for("x.py", "1", "9"))
    r = client.post(
        _url(campaign, run, "approve"),
        {"variant": "a", "diff_hash": stale, "publish_hash": _text(campaign)},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 409 and "changed since you loaded" in r.json()["detail"]
    # An approval must name the text to publish it was shown, as it names the diff.
    r = client.post(
        _url(campaign, run, "approve"),
        {"diff_hash": b.diff_sha256},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "publish_hash"
    bulk = client.post(
        f"/api/v1/review/campaigns/{campaign.pk}/bulk-approve",
        {"group_key": "0" * 64, "variant_name": "b", "run_ids": [run.pk], "diff_hashes": {}},
        content_type="application/json",
        **h,
    )
    assert bulk.status_code == 422 and bulk.json()["errors"][0]["field"] == "publish_hash"
    r = client.post(
        _url(campaign, run, "approve"),
        {"diff_hash": b.diff_sha256, "comment": "lgtm", "publish_hash": _text(campaign)},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 200 and r.json()["approved"] is True
    r = client.post(
        _url(campaign, run, "reject"), {"comment": ""}, content_type="application/json", **h
    )
    assert r.status_code == 422 and "comment" in str(r.json())
    r = client.post(
        _url(campaign, run, "reject"), {"comment": "no"}, content_type="application/json", **h
    )
    assert r.status_code == 200 and r.json()["state"] == "rejected"
    r = client.post(
        _url(campaign, run, "pick"),
        {"variant": "a", "diff_hash": "short"},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 422 and "diff_hash" in str(r.json())


def test_api_four_eyes_and_roles(client, manager, outsider, setup):
    campaign, run, a, _b = setup
    r = client.post(
        _url(campaign, run, "approve"),
        {"variant": "a", "diff_hash": a.diff_sha256, "publish_hash": _text(campaign)},
        content_type="application/json",
        **_auth(manager),
    )
    assert r.status_code == 403 and "Four-eyes" in r.json()["detail"]
    r = client.post(
        _url(campaign, run, "pick"),
        {"variant": "a", "diff_hash": a.diff_sha256},
        content_type="application/json",
        **_auth(manager),
    )
    assert r.status_code == 403  # managers do not review
    r = client.get(_url(campaign, run), **_auth(outsider))
    assert r.status_code == 404
    assert not RunReview.objects.filter(run=run).exists()


def test_api_bulk_approve_publish_and_changesets(client, manager, reviewer):
    campaign = campaign_make(owner=manager, variants=("only",))
    runs = [run_make(campaign=campaign) for _ in range(3)]
    for i, r in enumerate(runs):
        variant_make(run=r, name="only", patch=patch_for("y.py", "a", "b", line=i + 1))
    h = _auth(reviewer)
    groups = client.get(f"/api/v1/review/campaigns/{campaign.pk}/groups", **h).json()
    assert [g["count"] for g in groups] == [3]
    assert groups[0]["files"] == ["y.py"] and "“a” → “b”" in groups[0]["summary"]
    assert groups[0]["near_group_keys"] == []
    r = client.post(
        f"/api/v1/review/campaigns/{campaign.pk}/bulk-approve",
        {
            "group_key": groups[0]["group_key"],
            "variant_name": "only",
            "run_ids": groups[0]["run_ids"],
            "diff_hashes": groups[0]["diff_hashes"],
            "publish_hash": groups[0]["publish_hash"],
        },
        content_type="application/json",
        **h,
    )
    assert r.status_code == 200 and sorted(r.json()["approved"]) == sorted(x.pk for x in runs)
    r = client.post(_url(campaign, runs[0], "publish"), **h)
    assert r.status_code == 202 and r.json()["state"] == "queued"
    assert r.json()["branch"] == campaign.spec["changeset"]["branch"]
    listing = client.get(f"/api/v1/review/campaigns/{campaign.pk}/changesets", **h).json()
    assert listing["count"] == 1 and listing["items"][0]["run_id"] == runs[0].pk
    assert Changeset.objects.count() == 1


def test_api_review_summary_publish_all_and_refusals(client, manager, reviewer, setup):
    campaign, run, a, _b = setup
    h = _auth(reviewer)
    r = client.get(_url(campaign, run), **h)
    assert r.status_code == 200 and r.json()["state"] == "unreviewed"
    assert r.json()["approved"] is False and r.json()["variant"] is None
    r = client.get(f"/api/v1/review/campaigns/{campaign.pk}/groups?variant=nope", **h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "variant"
    r = client.post(
        _url(campaign, run, "approve"),
        {"variant": "zzz", "diff_hash": a.diff_sha256, "publish_hash": _text(campaign)},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 422 and r.json()["errors"] == [
        {"field": "variant", "message": "variant: no variant 'zzz' in this run"}
    ]
    r = client.post(
        _url(campaign, run, "approve"),
        {"variant": "a", "diff_hash": a.diff_sha256, "publish_hash": _text(campaign)},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 200 and r.json()["decided_by"] == reviewer.username
    r = client.post(
        _url(campaign, run, "approve"),
        {"diff_hash": a.diff_sha256, "publish_hash": _text(campaign)},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 409 and r.json()["code"] == "review_conflict"
    publish_all = f"/api/v1/review/campaigns/{campaign.pk}/publish"
    assert client.post(publish_all, **_auth(manager)).status_code == 403  # managers do not review
    r = client.post(publish_all, **h)
    assert r.status_code == 200 and r.json() == {"queued": [run.pk], "refused": []}
    assert client.post(publish_all, **h).json() == {"queued": [], "refused": []}
    r = client.get(f"/api/v1/review/campaigns/{campaign.pk}/changesets?state=queued", **h)
    assert [c["repository"] for c in r.json()["items"]] == [run.repository.name]
    # The old paths are gone.
    assert client.get(f"/api/v1/campaigns/{campaign.pk}/changesets", **h).status_code == 404


def test_api_bulk_approval_approves_only_the_diffs_the_client_was_shown(client, manager, reviewer):
    """Bulk approval through the API approved each run's current diff as long as its group
    key matched (which ignores context and line numbers): a rerun between reading the groups
    and approving was approved unseen. Each run's hash from the groups must come back."""
    campaign = campaign_make(owner=manager, variants=("only",))
    runs = [run_make(campaign=campaign) for _ in range(2)]
    variants = [
        variant_make(run=r, name="only", patch=patch_for("y.py", "a", "b", line=i + 1))
        for i, r in enumerate(runs)
    ]
    h = _auth(reviewer)
    (group,) = client.get(f"/api/v1/review/campaigns/{campaign.pk}/groups", **h).json()
    assert group["diff_hashes"] == {str(v.run_id): v.diff_sha256 for v in variants}
    # The same change at another line, with another blob: the same group, another diff.
    variant_rerun(variants[1], patch_for("y.py", "a", "b", line=300, blob="3333333"))
    r = client.post(
        f"/api/v1/review/campaigns/{campaign.pk}/bulk-approve",
        {
            "group_key": group["group_key"],
            "variant_name": "only",
            "run_ids": group["run_ids"],
            "diff_hashes": group["diff_hashes"],
            "publish_hash": group["publish_hash"],
        },
        content_type="application/json",
        **h,
    )
    assert r.status_code == 200
    assert r.json()["approved"] == [runs[0].pk]
    assert [s["run_id"] for s in r.json()["skipped"]] == [runs[1].pk]
    missing = client.post(
        f"/api/v1/review/campaigns/{campaign.pk}/bulk-approve",
        {"group_key": group["group_key"], "variant_name": "only", "run_ids": group["run_ids"]},
        content_type="application/json",
        **h,
    )
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "diff_hashes"


def test_a_run_listed_twice_in_a_bulk_approval_is_approved_and_reported_once(
    client, manager, reviewer
):
    """The second copy of a run was reported skipped ("already approved") beside its approval."""
    campaign = campaign_make(owner=manager, variants=("only",))
    runs = [run_make(campaign=campaign) for _ in range(2)]
    for r in runs:
        variant_make(run=r, name="only", patch=patch_for("y.py", "a", "b"))
    h = _auth(reviewer)
    (group,) = client.get(f"/api/v1/review/campaigns/{campaign.pk}/groups", **h).json()
    first, second = group["run_ids"]
    r = client.post(
        f"/api/v1/review/campaigns/{campaign.pk}/bulk-approve",
        {
            "group_key": group["group_key"],
            "variant_name": "only",
            "run_ids": [first, second, first, first],
            "diff_hashes": group["diff_hashes"],
            "publish_hash": group["publish_hash"],
        },
        content_type="application/json",
        **h,
    )
    assert r.status_code == 200
    assert r.json()["approved"] == [first, second]
    assert r.json()["skipped"] == []
    assert RunReview.objects.filter(run_id__in=[first, second], state="approved").count() == 2
