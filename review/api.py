"""API routes for review under /api/v1/review/: a run's review, pick, approve, reject, publish,
the review queue, bulk groups and bulk approval, changesets.

Routes fetch through `review.permissions`, call a service and return a schema; refusals are
`core.errors` classes mapped once in config/errors.py.
"""

from __future__ import annotations

from ninja import Query, Router, Status

from core.schemas import OFFSET_MAX, errors_for
from review import selectors, services
from review.permissions import review_campaign_get_for_user, review_run_get_for_user
from review.schemas import (
    ApproveIn,
    BulkApproveIn,
    BulkApproveOut,
    ChangesetOut,
    ChangesetPageOut,
    GroupOut,
    PickIn,
    PublishApprovedOut,
    QueueFilter,
    QueuePageOut,
    RejectIn,
    ReviewOut,
)

router = Router(tags=["review"])

RUN = "/campaigns/{campaign_id}/runs/{run_id}"
CAMPAIGN = "/campaigns/{campaign_id}"


@router.get(RUN, response={200: ReviewOut, **errors_for(404)})
def run_review(request, campaign_id: str, run_id: int):
    run = review_run_get_for_user(user=request.auth, campaign_pk=campaign_id, pk=run_id)
    return selectors.run_review_summary(run=run)


@router.post(f"{RUN}/pick", response={200: ReviewOut, **errors_for(403, 404, 409, 422)})
def run_pick(request, campaign_id: str, run_id: int, data: PickIn):
    run = review_run_get_for_user(
        user=request.auth, campaign_pk=campaign_id, pk=run_id, action="decide"
    )
    services.variant_pick(
        run=run,
        variant=selectors.run_variant_get(run=run, ref=data.variant, required=True),
        actor=request.auth,
        diff_hash=data.diff_hash,
    )
    return selectors.run_review_summary(run=run)


@router.post(f"{RUN}/approve", response={200: ReviewOut, **errors_for(403, 404, 409, 422)})
def run_approve(request, campaign_id: str, run_id: int, data: ApproveIn):
    run = review_run_get_for_user(
        user=request.auth, campaign_pk=campaign_id, pk=run_id, action="approve"
    )
    services.change_approve(
        run=run,
        actor=request.auth,
        variant=selectors.run_variant_get(run=run, ref=data.variant),
        diff_hash=data.diff_hash,
        comment=data.comment,
        publish_hash=data.publish_hash,
    )
    return selectors.run_review_summary(run=run)


@router.post(f"{RUN}/reject", response={200: ReviewOut, **errors_for(403, 404, 409, 422)})
def run_reject(request, campaign_id: str, run_id: int, data: RejectIn):
    run = review_run_get_for_user(
        user=request.auth, campaign_pk=campaign_id, pk=run_id, action="decide"
    )
    services.change_reject(
        run=run, actor=request.auth, comment=data.comment, diff_hash=data.diff_hash
    )
    return selectors.run_review_summary(run=run)


@router.post(f"{RUN}/publish", response={202: ChangesetOut, **errors_for(403, 404, 409)})
def run_publish(request, campaign_id: str, run_id: int):
    run = review_run_get_for_user(
        user=request.auth, campaign_pk=campaign_id, pk=run_id, action="decide"
    )
    return Status(202, services.change_publish(run=run, actor=request.auth))


@router.get(f"{CAMPAIGN}/queue", response={200: QueuePageOut, **errors_for(404, 422)})
def review_queue(
    request,
    campaign_id: str,
    which: QueueFilter = "todo",
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
):
    """The review queue under one of the queue page's filters (`which`): `todo` (needs a
    decision), `approved`, `text_changed` (approved, text changed: needs approval), `rejected`,
    `published` or `all`, oldest first."""
    campaign = review_campaign_get_for_user(user=request.auth, pk=campaign_id)
    return selectors.queue_slice(campaign=campaign, which=which, limit=limit, offset=offset)


@router.get(f"{CAMPAIGN}/groups", response={200: list[GroupOut], **errors_for(404, 422)})
def review_groups(request, campaign_id: str, variant: str | None = None):
    """Runs waiting for a decision whose `variant` diffs are identical, largest group first."""
    campaign = review_campaign_get_for_user(user=request.auth, pk=campaign_id)
    name = selectors.variant_name_resolve(campaign=campaign, name=variant, strict=True)
    return selectors.bulk_groups(campaign=campaign, variant_name=name)


@router.post(
    f"{CAMPAIGN}/bulk-approve", response={200: BulkApproveOut, **errors_for(403, 404, 422)}
)
def review_bulk_approve(request, campaign_id: str, data: BulkApproveIn):
    campaign = review_campaign_get_for_user(user=request.auth, pk=campaign_id, action="decide")
    return services.changes_bulk_approve(
        campaign=campaign,
        group_key=data.group_key,
        variant_name=data.variant_name,
        run_ids=data.run_ids,
        actor=request.auth,
        comment=data.comment,
        diff_hashes=data.diff_hashes,
        publish_hash=data.publish_hash,
    )


@router.post(f"{CAMPAIGN}/publish", response={200: PublishApprovedOut, **errors_for(403, 404)})
def review_publish_approved(request, campaign_id: str):
    """Queue every approved, not yet published change of the campaign for publishing."""
    campaign = review_campaign_get_for_user(user=request.auth, pk=campaign_id, action="decide")
    return services.changes_publish_approved(campaign=campaign, actor=request.auth)


@router.get(f"{CAMPAIGN}/changesets", response={200: ChangesetPageOut, **errors_for(404)})
def changeset_list(
    request,
    campaign_id: str,
    state: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
):
    campaign = review_campaign_get_for_user(user=request.auth, pk=campaign_id)
    return selectors.changeset_slice(campaign=campaign, state=state, limit=limit, offset=offset)


ROUTERS = [("/review", router)]
