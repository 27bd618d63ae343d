"""API routes for review: pick, approve, reject, bulk approve, publish, changesets."""

from __future__ import annotations

from datetime import datetime

from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from accounts.auth import require_capability
from campaigns.models import Campaign, RepoRun, Variant
from campaigns.selectors import campaign_get_for_user
from review import selectors, services
from review.models import Changeset, RunReview

router = Router(tags=["review"])


class PickIn(Schema):
    variant: int | str = Field(..., description="Variant id or name")
    diff_hash: str = Field(..., min_length=64, max_length=64, description="sha256 you reviewed")


class ApproveIn(Schema):
    diff_hash: str = Field(..., min_length=64, max_length=64)
    variant: int | str | None = Field(None, description="Pick this variant and approve it")
    comment: str = Field("", max_length=5000)


class RejectIn(Schema):
    comment: str = Field(..., min_length=1, max_length=5000)
    diff_hash: str = Field("", max_length=64)


class BulkApproveIn(Schema):
    group_key: str = Field(..., min_length=64, max_length=64)
    variant_name: str = Field(..., min_length=1, max_length=100)
    run_ids: list[int] = Field(..., min_length=1, max_length=5000)
    comment: str = Field("", max_length=5000)


class BulkApproveOut(Schema):
    approved: list[int]
    skipped: list[dict]


class ReviewOut(Schema):
    run_id: int
    state: str
    approved: bool
    variant: str | None
    picked_hash: str
    approved_hash: str
    comment: str
    decided_by: str | None
    decided_at: datetime | None


class ChangesetOut(Schema):
    id: int
    run_id: int
    repository: str
    branch: str
    state: str
    checks: str
    commit: str
    pr_number: int | None
    pr_url: str
    diff_hash: str
    error: str
    published_at: datetime | None
    refreshed_at: datetime | None


class ChangesetPageOut(Schema):
    count: int
    items: list[ChangesetOut]


class GroupOut(Schema):
    group_key: str
    count: int
    variant_name: str
    diff_sha256: str
    run_ids: list[int]
    repositories: list[str]


class ErrorOut(Schema):
    detail: str
    field: str = ""


def _campaign(request, campaign_id: str, *, write: bool = False) -> Campaign:
    campaign = campaign_get_for_user(user=request.auth, pk=campaign_id)
    if write:
        require_capability(request, "change_review")
    return campaign


def _run(request, campaign: Campaign, run_id: int) -> RepoRun:
    return selectors.review_run_get_for_user(user=request.auth, campaign=campaign, pk=run_id)


def _variant(run: RepoRun, ref: int | str | None) -> Variant | None:
    if ref is None:
        return None
    lookup = {"pk": ref} if isinstance(ref, int) or str(ref).isdigit() else {"name": ref}
    variant = run.variants.filter(**lookup).first()
    if variant is None:
        raise HttpError(422, f"variant: no variant {ref!r} in this run")
    return variant


def _review_out(run: RepoRun) -> dict:
    rv = RunReview.objects.select_related("variant", "decided_by").filter(run_id=run.pk).first()
    if rv is None:
        return {
            "run_id": run.pk,
            "state": "unreviewed",
            "approved": False,
            "variant": None,
            "picked_hash": "",
            "approved_hash": "",
            "comment": "",
            "decided_by": None,
            "decided_at": None,
        }
    return {
        "run_id": run.pk,
        "state": rv.state,
        "approved": services.review_is_approved(rv, rv.variant),
        "variant": rv.variant.name if rv.variant else None,
        "picked_hash": rv.picked_hash,
        "approved_hash": rv.approved_hash,
        "comment": rv.comment,
        "decided_by": rv.decided_by.username if rv.decided_by else None,
        "decided_at": rv.decided_at,
    }


def _refused(exc: services.ReviewError):
    raise HttpError(exc.status, str(exc)) from None


@router.get("/campaigns/{campaign_id}/runs/{run_id}/review", response=ReviewOut)
def run_review(request, campaign_id: str, run_id: int):
    campaign = _campaign(request, campaign_id)
    return _review_out(_run(request, campaign, run_id))


@router.post(
    "/campaigns/{campaign_id}/runs/{run_id}/pick", response={200: ReviewOut, 409: ErrorOut}
)
def run_pick(request, campaign_id: str, run_id: int, data: PickIn):
    campaign = _campaign(request, campaign_id, write=True)
    run = _run(request, campaign, run_id)
    try:
        services.variant_pick(
            run=run,
            variant=_variant(run, data.variant),
            actor=request.auth,
            diff_hash=data.diff_hash,
            request=request,
        )
    except services.ReviewError as exc:
        _refused(exc)
    return _review_out(run)


@router.post(
    "/campaigns/{campaign_id}/runs/{run_id}/approve",
    response={200: ReviewOut, 403: ErrorOut, 409: ErrorOut},
)
def run_approve(request, campaign_id: str, run_id: int, data: ApproveIn):
    campaign = _campaign(request, campaign_id)
    run = _run(request, campaign, run_id)
    try:
        services.four_eyes_check(run=run, actor=request.auth, request=request)
    except services.FourEyesRefused as exc:
        _refused(exc)
    require_capability(request, "change_review")
    try:
        services.change_approve(
            run=run,
            actor=request.auth,
            variant=_variant(run, data.variant),
            diff_hash=data.diff_hash,
            comment=data.comment,
            request=request,
        )
    except services.ReviewError as exc:
        _refused(exc)
    return _review_out(run)


@router.post(
    "/campaigns/{campaign_id}/runs/{run_id}/reject", response={200: ReviewOut, 409: ErrorOut}
)
def run_reject(request, campaign_id: str, run_id: int, data: RejectIn):
    campaign = _campaign(request, campaign_id, write=True)
    run = _run(request, campaign, run_id)
    try:
        services.change_reject(
            run=run,
            actor=request.auth,
            comment=data.comment,
            diff_hash=data.diff_hash,
            request=request,
        )
    except services.ReviewError as exc:
        _refused(exc)
    return _review_out(run)


@router.get("/campaigns/{campaign_id}/review/groups", response=list[GroupOut])
def review_groups(request, campaign_id: str, variant: str | None = None):
    campaign = _campaign(request, campaign_id)
    names = selectors.variant_names(campaign=campaign)
    name = variant or names[0]
    if name not in names:
        raise HttpError(422, f"variant: no variant named {name!r} in this campaign")
    services.variant_digests_refresh(campaign=campaign)
    return [
        {
            "group_key": g.group_key,
            "count": g.count,
            "variant_name": name,
            "diff_sha256": g.sample.diff_sha256,
            "run_ids": [r.pk for r in g.runs],
            "repositories": [r.repository.name for r in g.runs],
        }
        for g in selectors.bulk_groups(campaign=campaign, variant_name=name)
    ]


@router.post(
    "/campaigns/{campaign_id}/review/bulk-approve",
    response={200: BulkApproveOut, 403: ErrorOut, 409: ErrorOut},
)
def review_bulk_approve(request, campaign_id: str, data: BulkApproveIn):
    campaign = _campaign(request, campaign_id, write=True)
    try:
        return services.changes_bulk_approve(
            campaign=campaign,
            group_key=data.group_key,
            variant_name=data.variant_name,
            run_ids=data.run_ids,
            actor=request.auth,
            comment=data.comment,
            request=request,
        )
    except services.ReviewError as exc:
        _refused(exc)


@router.post(
    "/campaigns/{campaign_id}/runs/{run_id}/publish",
    response={202: ChangesetOut, 409: ErrorOut},
)
def run_publish(request, campaign_id: str, run_id: int):
    campaign = _campaign(request, campaign_id, write=True)
    run = _run(request, campaign, run_id)
    try:
        changeset = services.change_publish(run=run, actor=request.auth, request=request)
    except services.ReviewError as exc:
        _refused(exc)
    return Status(202, _changeset_out(changeset, run.repository.name))


def _changeset_out(c: Changeset, repository: str) -> dict:
    return {
        "id": c.pk,
        "run_id": c.run_id,
        "repository": repository,
        "branch": c.branch,
        "state": c.state,
        "checks": c.checks,
        "commit": c.commit,
        "pr_number": c.pr_number,
        "pr_url": c.pr_url,
        "diff_hash": c.diff_hash,
        "error": c.error,
        "published_at": c.published_at,
        "refreshed_at": c.refreshed_at,
    }


@router.get("/campaigns/{campaign_id}/changesets", response=ChangesetPageOut)
def changeset_list(
    request,
    campaign_id: str,
    state: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
):
    campaign = _campaign(request, campaign_id)
    qs = Changeset.objects.filter(campaign=campaign).select_related("run__repository")
    if state:
        qs = qs.filter(state=state)
    qs = qs.order_by("id")
    page = list(qs[offset : offset + limit])
    return {
        "count": qs.count(),
        "items": [_changeset_out(c, c.run.repository.name) for c in page],
    }


__all__ = ["router"]


ROUTERS = [("/", router)]
