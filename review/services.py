"""Review writes: pick a variant, approve or reject a change, bulk approve, publish.

Every decision names the diff hash the reviewer saw; a decision on a diff that has changed
since (a rerun) is refused with `StaleDecision`. Approval is valid only while the picked
variant still has the approved hash. The four-eyes rule refuses approvals by the person who
launched the campaign unless the campaign turned it off.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.services import audit_record
from campaigns.models import Campaign, RepoRun, Variant, VariantState
from review.diffs import diff_group_key
from review.models import (
    Changeset,
    ChangesetState,
    Decision,
    DecisionKind,
    ReviewState,
    RunReview,
    VariantDigest,
)

logger = logging.getLogger(__name__)


class ReviewError(Exception):
    """A decision that cannot be made; the message is for the reviewer, `field` names the input."""

    status = 409

    def __init__(self, message: str, *, field: str = "", status: int | None = None):
        super().__init__(message)
        self.field = field
        if status is not None:
            self.status = status


class StaleDecision(ReviewError):
    pass


class FourEyesRefused(ReviewError):
    status = 403


def _context(run: RepoRun, variant: Variant | None = None) -> dict:
    ctx = {"campaign_id": run.campaign_id, "run_id": run.pk}
    if variant is not None:
        ctx["variant_id"] = variant.pk
    return ctx


def _review_locked(run: RepoRun) -> RunReview:
    """This run's review row, created on first use and locked for the rest of the transaction."""
    RunReview.objects.get_or_create(run_id=run.pk, defaults={"campaign_id": run.campaign_id})
    return RunReview.objects.select_for_update().get(run_id=run.pk)


def review_is_approved(review: RunReview | None, variant: Variant | None) -> bool:
    """Approved, and the approved diff is still the variant's diff."""
    return bool(
        review is not None
        and review.state == ReviewState.APPROVED
        and variant is not None
        and review.approved_hash
        and review.approved_hash == variant.diff_sha256
    )


def _check_hash(variant: Variant, diff_hash: str) -> None:
    if not diff_hash:
        raise ReviewError(
            "diff_hash: required (the hash of the diff you reviewed)", field="diff_hash", status=422
        )
    if variant.diff_sha256 != diff_hash:
        raise StaleDecision(
            f"The diff of variant “{variant.name}” changed since you loaded the page "
            "(the run was redone). Reload and review the new diff.",
            field="diff_hash",
        )


def _check_reviewable(variant: Variant) -> None:
    if variant.state != VariantState.COMPLETED:
        raise ReviewError(
            f"Variant “{variant.name}” is {variant.state}; only completed variants can be chosen.",
            field="variant",
        )
    if not variant.diff_sha256:
        raise ReviewError(f"Variant “{variant.name}” changed nothing.", field="variant")


def four_eyes_applies(*, campaign: Campaign, user) -> bool:
    """True when `user` launched the campaign and it keeps the four-eyes rule."""
    return campaign.four_eyes and user.pk == (campaign.launched_by_id or campaign.owner_id)


def _four_eyes(campaign: Campaign, actor) -> None:
    if four_eyes_applies(campaign=campaign, user=actor):
        raise FourEyesRefused(
            "Four-eyes rule: you launched this campaign, so someone else must approve its changes."
        )


def four_eyes_check(*, run: RepoRun, actor, request=None) -> None:
    """Refuse (and audit the refusal) when the actor launched this run's campaign."""
    try:
        _four_eyes(run.campaign, actor)
    except FourEyesRefused as exc:
        _deny(
            action="review.change.approved", run=run, actor=actor, reason=str(exc), request=request
        )
        raise


def _deny(*, action: str, run: RepoRun, actor, reason: str, request=None) -> None:
    """Record a refused decision in its own transaction (the refusal itself rolls back)."""
    with transaction.atomic():
        audit_record(
            action=action,
            actor=actor,
            target=run,
            outcome="denied",
            context=_context(run),
            reason=reason,
            request=request,
        )


def _decision(*, run, variant, kind, actor, diff_hash="", comment="", group_key="") -> Decision:
    return Decision.objects.create(
        run_id=run.pk,
        variant=variant,
        variant_name=variant.name if variant else "",
        kind=kind,
        diff_hash=diff_hash,
        comment=comment,
        group_key=group_key,
        actor=actor,
    )


def variant_pick(
    *, run: RepoRun, variant: Variant, actor, diff_hash: str, request=None
) -> RunReview:
    """Choose the variant of this run that should ship; changeable until approved."""
    if variant.run_id != run.pk:
        raise ReviewError("variant: not a variant of this run", field="variant", status=422)
    with transaction.atomic():
        variant = Variant.objects.select_for_update().get(pk=variant.pk)
        review = _review_locked(run)
        current = review.variant
        if review.state == ReviewState.APPROVED and review_is_approved(review, current):
            raise ReviewError(
                "This change is already approved; reject it first to choose another variant."
            )
        _check_reviewable(variant)
        _check_hash(variant, diff_hash)
        names = list(run.variants.order_by("position").values_list("name", flat=True))
        review.state = ReviewState.PICKED
        review.variant = variant
        review.picked_hash = diff_hash
        review.approved_hash = ""
        review.group_key = _group_key(variant)
        review.decided_by = actor
        review.decided_at = timezone.now()
        review.save()
        _decision(
            run=run, variant=variant, kind=DecisionKind.PICK, actor=actor, diff_hash=diff_hash
        )
        audit_record(
            action="review.variant.picked",
            actor=actor,
            target=run,
            context=_context(run, variant),
            payload={
                "chosen": variant.name,
                "alternatives": [n for n in names if n != variant.name],
                "diff_hash": diff_hash,
                "previous": current.name if current and current.pk != variant.pk else "",
            },
            request=request,
        )
    return review


def _group_key(variant: Variant) -> str:
    digest = VariantDigest.objects.filter(variant=variant, diff_sha256=variant.diff_sha256).first()
    if digest is not None:
        return digest.group_key
    return diff_group_key(bytes(variant.patch))


def change_approve(
    *,
    run: RepoRun,
    actor,
    diff_hash: str,
    variant: Variant | None = None,
    comment: str = "",
    group_key: str = "",
    request=None,
) -> RunReview:
    """Approve the picked variant (or pick `variant` and approve it) as it was reviewed."""
    four_eyes_check(run=run, actor=actor, request=request)
    with transaction.atomic():
        if variant is not None:
            review = RunReview.objects.filter(run_id=run.pk).first()
            if review is None or review.variant_id != variant.pk or review.state != "picked":
                variant_pick(
                    run=run, variant=variant, actor=actor, diff_hash=diff_hash, request=request
                )
        review = _review_locked(run)
        if review.variant_id is None:
            raise ReviewError("Pick a variant before approving.", field="variant")
        chosen = Variant.objects.select_for_update().get(pk=review.variant_id)
        if review_is_approved(review, chosen):
            raise ReviewError("This change is already approved.")
        _check_reviewable(chosen)
        _check_hash(chosen, diff_hash)
        review.state = ReviewState.APPROVED
        review.approved_hash = diff_hash
        review.picked_hash = diff_hash
        review.comment = comment
        review.decided_by = actor
        review.decided_at = timezone.now()
        review.save()
        _decision(
            run=run,
            variant=chosen,
            kind=DecisionKind.APPROVE,
            actor=actor,
            diff_hash=diff_hash,
            comment=comment,
            group_key=group_key,
        )
        audit_record(
            action="review.change.approved",
            actor=actor,
            target=run,
            context=_context(run, chosen),
            payload={"variant": chosen.name, "diff_hash": diff_hash, "group_key": group_key},
            reason=comment,
            request=request,
        )
    return review


def change_reject(
    *, run: RepoRun, actor, comment: str, diff_hash: str = "", request=None
) -> RunReview:
    """Reject this run's change (with a reason); the run can be picked again later."""
    comment = (comment or "").strip()
    if not comment:
        raise ReviewError("comment: say why the change is rejected", field="comment", status=422)
    with transaction.atomic():
        review = _review_locked(run)
        chosen = Variant.objects.filter(pk=review.variant_id).first()
        if chosen is not None and diff_hash:
            _check_hash(chosen, diff_hash)
        if Changeset.objects.filter(run_id=run.pk).exclude(state=ChangesetState.FAILED).exists():
            raise ReviewError("This change is already published; close its pull request instead.")
        review.state = ReviewState.REJECTED
        review.approved_hash = ""
        review.comment = comment
        review.decided_by = actor
        review.decided_at = timezone.now()
        review.save()
        _decision(
            run=run,
            variant=chosen,
            kind=DecisionKind.REJECT,
            actor=actor,
            diff_hash=chosen.diff_sha256 if chosen else "",
            comment=comment,
        )
        audit_record(
            action="review.change.rejected",
            actor=actor,
            target=run,
            context=_context(run, chosen),
            payload={
                "variant": chosen.name if chosen else "",
                "diff_hash": chosen.diff_sha256 if chosen else "",
            },
            reason=comment,
            request=request,
        )
    return review


def variant_digests_refresh(*, campaign: Campaign, batch: int = 500) -> int:
    """Compute the group key of every completed variant whose diff has no current digest."""
    done = 0
    while True:
        stale = list(
            Variant.objects.filter(run__campaign=campaign, state=VariantState.COMPLETED)
            .exclude(diff_sha256="")
            .filter(Q(digest__isnull=True) | ~Q(digest__diff_sha256=F("diff_sha256")))
            .only("pk", "patch", "diff_sha256")[:batch]
        )
        if not stale:
            return done
        VariantDigest.objects.bulk_create(
            [
                VariantDigest(
                    variant_id=v.pk,
                    campaign_id=campaign.pk,
                    diff_sha256=v.diff_sha256,
                    group_key=diff_group_key(bytes(v.patch)),
                )
                for v in stale
            ],
            update_conflicts=True,
            unique_fields=["variant"],
            update_fields=["diff_sha256", "group_key"],
        )
        done += len(stale)


def changes_bulk_approve(
    *,
    campaign: Campaign,
    group_key: str,
    variant_name: str,
    run_ids: list[int],
    actor,
    comment: str = "",
    request=None,
) -> dict:
    """Approve `variant_name` in each listed run whose diff is still in the group shown.

    Runs whose diff left the group since the page was drawn, or that are already approved,
    are skipped and reported, never approved unseen. One decision per run.
    """
    if not group_key:
        raise ReviewError("group_key: required", field="group_key", status=422)
    if not run_ids:
        raise ReviewError("run_ids: choose at least one repository", field="run_ids", status=422)
    try:
        _four_eyes(campaign, actor)
    except FourEyesRefused as exc:
        with transaction.atomic():
            audit_record(
                action="review.change.approved",
                actor=actor,
                target=campaign,
                outcome="denied",
                context={"campaign_id": campaign.pk},
                payload={"group_key": group_key, "run_ids": run_ids[:100]},
                reason=str(exc),
                request=request,
            )
        raise
    variant_digests_refresh(campaign=campaign)
    variants = {
        v.run_id: v
        for v in Variant.objects.filter(
            run__campaign=campaign, run_id__in=run_ids, name=variant_name
        ).select_related("digest", "run", "run__campaign")
    }
    approved, skipped = [], []
    for run_id in run_ids:
        v = variants.get(run_id)
        digest = getattr(v, "digest", None) if v else None
        if v is None or digest is None or digest.group_key != group_key:
            skipped.append({"run_id": run_id, "reason": "its diff differs from the group"})
            continue
        try:
            change_approve(
                run=v.run,
                actor=actor,
                diff_hash=v.diff_sha256,
                variant=v,
                comment=comment,
                group_key=group_key,
                request=request,
            )
            approved.append(run_id)
        except ReviewError as exc:
            skipped.append({"run_id": run_id, "reason": str(exc)})
    return {"approved": approved, "skipped": skipped}


def change_publish(*, run: RepoRun, actor, request=None) -> Changeset:
    """Queue the approved change for publishing: a branch push and, where possible, a PR."""
    from review.tasks import changeset_push_task

    spec_changeset = run.campaign.spec.get("changeset") or {}
    branch = spec_changeset.get("branch") or f"convoy/{run.campaign.name}"
    with transaction.atomic():
        review = _review_locked(run)
        chosen = Variant.objects.filter(pk=review.variant_id).first()
        if not review_is_approved(review, chosen):
            raise ReviewError(
                "Only approved changes are published; this one is not approved "
                "(or its diff changed after approval and needs approval again)."
            )
        if chosen.patch_truncated:
            raise ReviewError("The diff was cut at the size cap and cannot be published whole.")
        existing = Changeset.objects.select_for_update().filter(run_id=run.pk).first()
        if (
            existing
            and existing.diff_hash == chosen.diff_sha256
            and existing.state not in (ChangesetState.FAILED,)
        ):
            return existing
        changeset, _ = Changeset.objects.update_or_create(
            run_id=run.pk,
            defaults={
                "campaign_id": run.campaign_id,
                "variant": chosen,
                "diff_hash": chosen.diff_sha256,
                "branch": branch,
                "remote_url": run.repository.url,
                "state": ChangesetState.QUEUED,
                "error": "",
                "published_by": actor,
            },
        )
        audit_record(
            action="review.change.published",
            actor=actor,
            target=run,
            context=_context(run, chosen),
            payload={
                "variant": chosen.name,
                "diff_hash": chosen.diff_sha256,
                "branch": branch,
                "remote": run.repository.url,
                "status": "queued",
            },
            request=request,
        )
        transaction.on_commit(lambda: changeset_push_task.delay(changeset.pk))
    return changeset


def changeset_push(*, changeset_id: int) -> Changeset:
    """Push the changeset's commit and open its pull request; safe to run again."""
    from review.codehosts import CodeHostError, codehost_for_remote
    from review.publish import PublishError, change_push

    changeset = Changeset.objects.select_related("run", "run__campaign", "variant").get(
        pk=changeset_id
    )
    if changeset.state != ChangesetState.QUEUED:
        return changeset
    run, variant = changeset.run, changeset.variant
    spec = (run.campaign.spec.get("changeset") or {}) if run.campaign.spec else {}
    outcome, error, fields = "success", "", {}
    try:
        if variant is None or variant.diff_sha256 != changeset.diff_hash:
            raise PublishError("the variant changed after approval; approve it again")
        host = codehost_for_remote(changeset.remote_url)
        pushed = change_push(
            remote_url=changeset.remote_url,
            base_commit=run.base_commit,
            base_ref=run.ref,
            patch=bytes(variant.patch),
            branch=changeset.branch,
            message=spec.get("commit_message") or spec.get("title") or run.campaign.name,
            author=spec.get("author") or None,
            token=host[0].token if host is not None else "",
        )
        fields = {"commit": pushed.commit, "state": ChangesetState.PUSHED}
        if host is not None:
            adapter, slug = host
            pr = adapter.pull_request_upsert(
                repo=slug,
                head=changeset.branch,
                base=run.ref,
                title=spec.get("title") or run.campaign.name,
                body=spec.get("body") or run.campaign.description,
            )
            # The URL is shown as a link: only web addresses are kept.
            url = pr.url if pr.url.startswith(("https://", "http://")) else ""
            fields.update(pr_number=pr.number, pr_url=url, state=pr.state)
    except (PublishError, CodeHostError) as exc:
        if getattr(exc, "transient", False) and "commit" not in fields:
            raise
        outcome, error = "failure", str(exc)
        fields = {**fields, "state": ChangesetState.FAILED, "error": error}
    with transaction.atomic():
        updated = Changeset.objects.filter(pk=changeset.pk, state=ChangesetState.QUEUED).update(
            published_at=timezone.now(), refreshed_at=timezone.now(), **fields
        )
        if updated:
            audit_record(
                action="review.change.published",
                actor=None,
                actor_type="system",
                on_behalf_of=changeset.published_by,
                target=run,
                outcome=outcome,
                context=_context(run, variant),
                payload={
                    "branch": changeset.branch,
                    "commit": fields.get("commit", ""),
                    "pull_request": fields.get("pr_url", ""),
                    "diff_hash": changeset.diff_hash,
                    "status": fields.get("state", ""),
                },
                reason=error,
            )
    changeset.refresh_from_db()
    return changeset


def changesets_refresh(*, limit: int = 200) -> int:
    """Update the state and checks of open pull requests from their code host."""
    from review.codehosts import CodeHostError, codehost_for_remote

    refreshed = 0
    open_states = (ChangesetState.DRAFT, ChangesetState.OPEN)
    for changeset in Changeset.objects.filter(
        state__in=open_states, pr_number__isnull=False
    ).order_by(F("refreshed_at").asc(nulls_first=True))[:limit]:
        host = codehost_for_remote(changeset.remote_url)
        if host is None:
            continue
        adapter, slug = host
        try:
            pr = adapter.pull_request_get(repo=slug, number=changeset.pr_number)
            checks = adapter.checks_get(repo=slug, ref=pr.head_sha or changeset.commit)
        except CodeHostError as exc:
            logger.warning("changeset %s refresh failed: %s", changeset.pk, exc)
            continue
        Changeset.objects.filter(pk=changeset.pk).update(
            state=pr.state, checks=checks, refreshed_at=timezone.now()
        )
        refreshed += 1
    return refreshed


def changes_publish_approved(*, campaign: Campaign, actor, request=None) -> dict:
    """Publish every approved, not yet published change of the campaign."""
    runs = (
        RepoRun.objects.filter(
            campaign=campaign,
            review__state=ReviewState.APPROVED,
            review__approved_hash=F("review__variant__diff_sha256"),
        )
        .filter(Q(changeset__isnull=True) | Q(changeset__state=ChangesetState.FAILED))
        .select_related("campaign", "repository")
    )
    queued, refused = [], []
    for run in runs:
        try:
            change_publish(run=run, actor=actor, request=request)
            queued.append(run.pk)
        except ReviewError as exc:
            refused.append({"run_id": run.pk, "reason": str(exc)})
    return {"queued": queued, "refused": refused}


__all__ = [
    "FourEyesRefused",
    "ReviewError",
    "StaleDecision",
    "change_approve",
    "change_publish",
    "change_reject",
    "changes_bulk_approve",
    "changes_publish_approved",
    "changeset_push",
    "changesets_refresh",
    "four_eyes_applies",
    "four_eyes_check",
    "review_is_approved",
    "variant_digests_refresh",
    "variant_pick",
]
