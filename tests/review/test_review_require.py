"""`review.require`: the spec field, what bulk approval takes and holds back (service, page,
API, audit), a single approval of a held-back variant, and a revision that only changes it."""

import json

import pytest
from django.urls import reverse

from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import CampaignState, RepoRun, Repository, RunState, Validation, Variant
from campaigns.revisions import campaign_revise, revision_plan
from campaigns.selectors import repository_ids_by_tag
from campaigns.services import campaign_create
from campaigns.spec import CampaignSpecError, spec_parse
from review.models import Decision, ReviewState, RunReview
from review.selectors import bulk_groups
from review.services import HeldBackRefused, changes_bulk_approve
from tests.factories import (
    PASSWORD,
    campaign_make,
    patch_for,
    repos_make,
    run_make,
    spec_for,
    variant_make,
)

pytestmark = pytest.mark.shapes("embedded", "production")

P, F, S, NONE = Validation.PASSED, Validation.FAILED, Validation.SKIPPED, Validation.NONE
# (baseline, validation) of each kind of variant; NONE as baseline: `baseline: false`.
KINDS = {
    "passes": (P, P),
    "passes_without_baseline": (NONE, P),
    "fixes": (F, P),
    "still_failing": (F, F),
    "regresses": (P, F),
    "fails": (NONE, F),
    "no_validate_steps": (NONE, S),
}
TAKEN = {
    "passes_or_fixes": {"passes", "passes_without_baseline", "fixes", "no_validate_steps"},
    "passes": {"passes", "passes_without_baseline"},
    "any": set(KINDS),
}

SPEC = """\
name: req
repos: {tag: t}
transform: [{run: "true"}]
validate: [{run: "pytest"}]
"""


def _events(action):
    return [json.loads(e.body) for e in AuditEvent.objects.filter(action=action).order_by("id")]


def _campaign(owner, require=None, variants=("only",)):
    campaign = campaign_make(owner=owner, variants=variants)
    if require is not None:
        campaign.spec["review"] = {"four_eyes": True, "require": require}
        campaign.save(update_fields=["spec"])
    return campaign


def _runs(campaign, kinds=KINDS, name="only"):
    """One run per kind, all making the same change (one bulk group)."""
    runs = {}
    for i, kind in enumerate(kinds):
        baseline, validation = KINDS[kind]
        run = run_make(campaign=campaign)
        RepoRun.objects.filter(pk=run.pk).update(baseline=baseline)
        patch = patch_for("t.py", "old()", "new()", line=i + 3, blob=f"{i}" * 7)
        variant_make(run=run, name=name, patch=patch, validation=validation)
        runs[kind] = run
    return runs


# --- the spec field -------------------------------------------------------------------------


def test_spec_review_require_defaults_accepts_its_values_and_names_the_field_when_wrong():
    assert spec_parse(SPEC).data["review"] == {"four_eyes": True, "require": "passes_or_fixes"}
    for value in ("passes_or_fixes", "passes", "any"):
        parsed = spec_parse(SPEC + f"review: {{require: {value}}}\n")
        assert parsed.data["review"]["require"] == value
    with pytest.raises(CampaignSpecError) as exc:
        spec_parse(SPEC + "review:\n  four_eyes: false\n  require: mostly\n")
    assert str(exc.value.errors[0]) == (
        "review.require: must be one of passes_or_fixes, passes, any, got 'mostly' (line 7)"
    )
    with pytest.raises(CampaignSpecError) as exc:
        spec_parse(SPEC + "review: {require: [passes]}\n")
    assert exc.value.errors[0].message.endswith("got a list")
    # Without validate steps no variant passes: `passes` would hold every change back.
    no_validate = SPEC.replace('validate: [{run: "pytest"}]\n', "")
    with pytest.raises(CampaignSpecError) as exc:
        spec_parse(no_validate + "review: {require: passes}\n")
    assert exc.value.errors[0].path == "review.require"
    assert "passes needs validate steps" in exc.value.errors[0].message
    assert spec_parse(no_validate + "review: {require: any}\n").data["review"]["require"] == "any"


# --- bulk approval --------------------------------------------------------------------------


@pytest.mark.parametrize("require", [None, "passes_or_fixes", "passes", "any"])
def test_bulk_approval_takes_only_the_outcomes_review_require_allows(manager, reviewer, require):
    campaign = _campaign(manager, require)
    runs = _runs(campaign)
    taken = TAKEN[require or "passes_or_fixes"]
    groups = bulk_groups(campaign=campaign, variant_name="only")
    assert len(groups) == 1
    group = groups[0]
    assert {r.pk for r in group.runs} == {runs[k].pk for k in taken}

    result = changes_bulk_approve(
        campaign=campaign,
        group_key=group.group_key,
        variant_name="only",
        run_ids=[r.pk for r in group.runs],
        actor=reviewer,
        diff_hashes={r.pk: h for r, h in group.members},
    )
    assert sorted(result.approved) == sorted(runs[k].pk for k in taken)
    assert result.skipped == []
    approved = set(
        RunReview.objects.filter(state=ReviewState.APPROVED).values_list("run_id", flat=True)
    )
    assert approved == {runs[k].pk for k in taken}
    held = set(KINDS) - taken
    assert result.held_back == len(held)
    expected_by = {k.replace("_", " "): 1 for k in held if k in ("still_failing", "regresses")}
    expected_by.update({"fails": 1} if "fails" in held else {})
    expected_by.update({"fixes": 1} if "fixes" in held else {})
    expected_by.update({"not validated": 1} if "no_validate_steps" in held else {})
    assert result.held_back_by == expected_by
    (event,) = _events("review.changes.bulk_approved")
    assert event["payload"]["approved"] == len(taken)
    assert event["payload"]["held_back"] == len(held)
    assert event["payload"]["held_back_by"] == expected_by
    assert event["payload"]["require"] == (require or "passes_or_fixes")


def test_bulk_approval_naming_a_held_back_run_is_refused_whole(manager, reviewer):
    campaign = _campaign(manager)
    runs = _runs(campaign, kinds=("passes", "regresses", "still_failing"))
    group = bulk_groups(campaign=campaign, variant_name="only")[0]
    with pytest.raises(HeldBackRefused) as exc:
        changes_bulk_approve(
            campaign=campaign,
            group_key=group.group_key,
            variant_name="only",
            run_ids=[runs["passes"].pk, runs["regresses"].pk],
            actor=reviewer,
        )
    assert exc.value.field == "run_ids" and exc.value.status == 422
    assert f"run {runs['regresses'].pk} regresses" in exc.value.message
    assert "review.require (passes_or_fixes)" in exc.value.message
    assert not Decision.objects.exists() and not RunReview.objects.exists()
    assert not _events("review.changes.bulk_approved")


# --- pages ----------------------------------------------------------------------------------


def _login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def test_bulk_page_says_what_was_held_back_and_a_single_approval_warns_first(
    client, manager, reviewer
):
    campaign = _campaign(manager)
    runs = _runs(campaign, kinds=("passes", "fixes", "regresses", "still_failing"))
    extra = run_make(campaign=campaign)  # a second regression, with the same change
    RepoRun.objects.filter(pk=extra.pk).update(baseline=P)
    variant_make(run=extra, name="only", patch=patch_for("t.py", "old()", "new()"), validation=F)
    _login(client, reviewer)
    bulk = reverse("review-bulk", args=[campaign.pk])
    html = client.get(f"{bulk}?variant=only").content.decode()
    assert (
        "Held back by review.require (passes_or_fixes): 2 regress, 1 still failing. "
        "Review them one by one"
    ) in html
    assert "Group 1: 2 repositories with this change" in html
    held_block = html.split('data-testid="group-held-back"')[1].split("</div>")[0]
    for run in (runs["regresses"], extra, runs["still_failing"]):
        assert run.repository.name in held_block
        assert reverse("review-compare", args=[campaign.pk, run.pk]) in held_block
    assert runs["passes"].repository.name not in held_block

    # The held-back run is still reviewable on its own page: its outcome shown, the approval
    # asking for confirmation first.
    regress = runs["regresses"]
    page = client.get(reverse("review-compare", args=[campaign.pk, regress.pk])).content.decode()
    assert "“only” regresses against the baseline, so review.require (passes_or_fixes)" in page
    assert 'data-confirm-action="Approve anyway"' in page
    variant = Variant.objects.get(run=regress)
    r = client.post(
        reverse("review-decide", args=[campaign.pk, regress.pk, "approve"]),
        {"variant": variant.pk, "diff_hash": variant.diff_sha256, "shown": _shown(page)},
    )
    assert r.status_code == 302
    assert RunReview.objects.get(run=regress).state == ReviewState.APPROVED


def _shown(page: str) -> str:
    return page.split('name="shown" value="')[1].split('"')[0]


# --- API ------------------------------------------------------------------------------------


def test_api_bulk_approve_refuses_held_back_runs_and_reports_them(client, manager, reviewer):
    campaign = _campaign(manager)
    runs = _runs(campaign, kinds=("passes", "fixes", "regresses"))
    _, raw = token_create(user=reviewer, name="t", scope="write")
    h = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    base = f"/api/v1/review/campaigns/{campaign.pk}"
    (group,) = client.get(f"{base}/groups?variant=only", **h).json()
    assert sorted(group["run_ids"]) == sorted([runs["passes"].pk, runs["fixes"].pk])
    body = {
        "group_key": group["group_key"],
        "variant_name": "only",
        "diff_hashes": group["diff_hashes"],
        "publish_hash": group["publish_hash"],
    }
    r = client.post(
        f"{base}/bulk-approve",
        {**body, "run_ids": [runs["passes"].pk, runs["regresses"].pk]},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 422
    assert r.json()["code"] == "held_back"
    assert r.json()["errors"][0]["field"] == "run_ids"
    assert f"run {runs['regresses'].pk} regresses" in r.json()["detail"]
    r = client.post(
        f"{base}/bulk-approve",
        {**body, "run_ids": group["run_ids"]},
        content_type="application/json",
        **h,
    )
    assert r.status_code == 200
    assert sorted(r.json()["approved"]) == sorted(group["run_ids"])
    assert r.json()["held_back"] == 1 and r.json()["held_back_by"] == {"regresses": 1}


# --- revisions ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_changing_review_require_in_a_revision_reruns_nothing(manager, reviewer):
    tag, _ = repos_make(1)
    source = spec_for(tag, name="req-rev")
    campaign = campaign_create(actor=manager, source=source)
    (repo_id,) = repository_ids_by_tag(tag)
    repo = Repository.objects.get(pk=repo_id)
    run = RepoRun.objects.create(
        campaign=campaign, repository=repo, ref="main", state=RunState.SUCCEEDED, baseline=P
    )
    names = campaign.variant_names
    for i, name in enumerate(names):
        patch = patch_for("t.py", "old()", f"new_{i}()")
        variant_make(run=run, name=name, position=i, patch=patch, validation=F)
    campaign.state = CampaignState.COMPLETED
    campaign.save(update_fields=["state"])
    before = {v.pk: (v.attempt, v.diff_sha256, v.state) for v in run.variants.all()}
    assert bulk_groups(campaign=campaign, variant_name=names[0]) == []  # all regress

    edited = source + "\nreview: {require: any}\n"
    plan = revision_plan(campaign=campaign, source=edited, actor=manager)
    assert not plan["rerun_all"] and plan["changed_variants"] == []
    assert plan["runs_to_rerun"] == 0 and "+review: {require: any}" in plan["spec_diff"]
    campaign_revise(campaign=campaign, actor=manager, source=edited)
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.COMPLETED
    assert campaign.spec["review"]["require"] == "any"
    after = {v.pk: (v.attempt, v.diff_sha256, v.state) for v in run.variants.all()}
    assert after == before
    assert [g.count for g in bulk_groups(campaign=campaign, variant_name=names[0])] == [1]
