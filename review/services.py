"""Review writes: pick a variant, approve or reject a change, bulk approve, publish.

Every decision names the diff hash the reviewer saw; a decision on a diff that has changed
since (a rerun) is refused with `StaleDecision`. Approval is valid only while the picked
variant still has the approved hash. The four-eyes rule refuses approvals by the person who
launched the campaign unless the campaign turned it off. Refusals are `core.errors` classes,
so pages and API routes show them without catching anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.record import audit_record
from campaigns.models import Campaign, CampaignState, RepoRun, Variant, VariantState
from campaigns.secret_grants import variant_secret_check
from campaigns.selectors import campaign_is_author
from core.errors import Conflict, Invalid, PermissionDenied

# review.tasks imports this module too: both import the other module (not its names) and only
# reach into it at call time, so either may be imported first (Celery imports tasks first).
from review import codehosts, tasks
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
from review.publish import PublishError, change_push
from review.publish_text import publish_text_changes, publish_text_for, publish_text_hash
from review.require import bulk_held_back, campaign_require, held_reason, require_allows
from review.selectors import (
    approval_standing,
    approval_text_changes,
    publish_all_runs,
    review_is_approved,
)

logger = logging.getLogger(__name__)

FOUR_EYES = "Four-eyes rule: you launched this campaign, so someone else must approve its changes."


class ReviewError(Conflict):
    """The run's review state does not allow this decision now; the message is for the reviewer."""

    code = "review_conflict"


class StaleDecision(ReviewError):
    """The diff changed (a rerun) since the reviewer loaded it."""

    code = "stale_decision"


class FourEyesRefused(PermissionDenied):
    """The launcher of a campaign may not approve its changes. Audited where it is raised."""

    code = "four_eyes"

    def __init__(self, message: str = FOUR_EYES):
        super().__init__(message, capability="four_eyes")
        # The refusal is recorded as a denied `review.change.approved` event before it is
        # raised; config/errors.py does not record it a second time.
        self.audited = True


@dataclass(frozen=True)
class RunSkipped:
    run_id: int
    reason: str


@dataclass
class BulkApproval:
    """What a bulk approval did: runs approved, runs left alone and why, and how many runs of
    the group `review.require` held back (for one-by-one review)."""

    approved: list[int] = field(default_factory=list)
    skipped: list[RunSkipped] = field(default_factory=list)
    held_back: int = 0
    held_back_by: dict[str, int] = field(default_factory=dict)


class HeldBackRefused(Invalid):
    """A bulk approval named runs whose outcome `review.require` keeps out of bulk approval."""

    code = "held_back"


@dataclass
class PublishRequests:
    """What publishing every approved change queued, and what it refused."""

    queued: list[int] = field(default_factory=list)
    refused: list[RunSkipped] = field(default_factory=list)


def _context(run: RepoRun, variant: Variant | None = None) -> dict:
    ctx = {"campaign_id": run.campaign_id, "run_id": run.pk}
    if variant is not None:
        ctx["variant_id"] = variant.pk
    return ctx


def _review_locked(run: RepoRun) -> RunReview:
    """This run's review row, created on first use and locked for the rest of the transaction."""
    RunReview.objects.get_or_create(run_id=run.pk, defaults={"campaign_id": run.campaign_id})
    return RunReview.objects.select_for_update().get(run_id=run.pk)


def _check_hash(variant: Variant, diff_hash: str) -> None:
    if not diff_hash:
        raise Invalid("diff_hash: required (the hash of the diff you reviewed)", field="diff_hash")
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
    """True when the campaign keeps the four-eyes rule and `user` wrote or started its changes:
    its owner, its launcher, an editor of its draft or the author of one of its revisions (only
    the launcher was refused: the owner of a campaign someone else launched, or a manager who
    applied a revision with new commands, approved their own change)."""
    return campaign.four_eyes and campaign_is_author(campaign=campaign, user=user)


def _four_eyes_refuse(*, actor, target, context: dict, payload: dict | None = None) -> None:
    """Record the refused approval in its own transaction (the refusal itself rolls back)."""
    with transaction.atomic():
        audit_record(
            action="review.change.approved",
            actor=actor,
            target=target,
            outcome="denied",
            context=context,
            payload=payload,
            reason=FOUR_EYES,
        )
    raise FourEyesRefused()


def four_eyes_check(*, run: RepoRun, actor) -> None:
    """Refuse (and audit the refusal) when the actor launched this run's campaign."""
    if four_eyes_applies(campaign=run.campaign, user=actor):
        _four_eyes_refuse(actor=actor, target=run, context=_context(run))


def _decision(
    *, run, variant, kind, actor, diff_hash="", comment="", group_key="", publish_text=None
) -> Decision:
    return Decision.objects.create(
        run_id=run.pk,
        variant=variant,
        variant_name=variant.name if variant else "",
        kind=kind,
        diff_hash=diff_hash,
        comment=comment,
        group_key=group_key,
        actor=actor,
        publish_text=publish_text.as_dict() if publish_text else {},
        publish_hash=publish_text.sha256 if publish_text else "",
    )


def variant_pick(*, run: RepoRun, variant: Variant, actor, diff_hash: str) -> RunReview:
    """Choose the variant of this run that should ship; changeable until approved."""
    if variant.run_id != run.pk:
        raise Invalid("variant: not a variant of this run", field="variant")
    with transaction.atomic():
        variant = Variant.objects.select_for_update().get(pk=variant.pk)
        review = _review_locked(run)
        current = review.variant
        if review_is_approved(review, current) and not _approver_refused(run=run, review=review):
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
    publish_hash: str = "",
) -> RunReview:
    """Approve the picked variant (or pick `variant` and approve it) as it was reviewed, with
    the text it will be published with (review.publish_text). `publish_hash`, when given, is
    that text's hash as the reviewer was shown it. An approved change whose text a revision
    changed since is approved again here."""
    four_eyes_check(run=run, actor=actor)
    campaign = Campaign.objects.get(pk=run.campaign_id)  # the spec as it is now
    text = _publish_text_check(campaign=campaign, publish_hash=publish_hash)
    with transaction.atomic():
        if variant is not None:
            review = RunReview.objects.filter(run_id=run.pk).first()
            void = (
                review is not None
                and review.state == ReviewState.APPROVED
                and _approver_refused(run=run, review=review)
            )
            same = review is not None and review.variant_id == variant.pk
            if not (same and (review.state == "picked" or void or _reapproval(review))):
                variant_pick(run=run, variant=variant, actor=actor, diff_hash=diff_hash)
        review = _review_locked(run)
        if review.variant_id is None:
            raise ReviewError("Pick a variant before approving.", field="variant")
        chosen = Variant.objects.select_for_update().get(pk=review.variant_id)
        if (
            review_is_approved(review, chosen)
            and not _approver_refused(run=run, review=review)
            and not approval_text_changes(review=review, campaign=campaign)
        ):
            raise ReviewError("This change is already approved.")
        _check_reviewable(chosen)
        _check_hash(chosen, diff_hash)
        variant_secret_check(variant_id=chosen.pk)  # a diff holding a secret waits for an admin
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
            publish_text=text,
        )
        audit_record(
            action="review.change.approved",
            actor=actor,
            target=run,
            context=_context(run, chosen),
            payload={
                "variant": chosen.name,
                "diff_hash": diff_hash,
                "group_key": group_key,
                "publish_hash": text.sha256,
            },
            reason=comment,
        )
    return review


def _publish_text_check(*, campaign: Campaign, publish_hash: str):
    """The campaign's text to publish now; StaleDecision when it is not the one (`publish_hash`)
    the reviewer was shown."""
    text = publish_text_for(campaign)
    if publish_hash and publish_hash != text.sha256:
        raise StaleDecision(
            "The text to publish (title, body, commit message or author) changed since you "
            "loaded the page (a campaign revision). Reload and review it.",
            field="publish_hash",
        )
    return text


def _reapproval(review: RunReview) -> bool:
    """True when the run is approved on its variant's current diff but the text to publish
    changed since: approving again keeps the pick."""
    variant = Variant.objects.filter(pk=review.variant_id).first()
    return review_is_approved(review, variant) and bool(
        approval_text_changes(review=review, campaign=Campaign.objects.get(pk=review.campaign_id))
    )


def change_reject(*, run: RepoRun, actor, comment: str, diff_hash: str = "") -> RunReview:
    """Reject this run's change (with a reason); the run can be picked again later."""
    comment = (comment or "").strip()
    if not comment:
        raise Invalid("comment: say why the change is rejected", field="comment")
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
        )
    return review


def changes_bulk_approve(
    *,
    campaign: Campaign,
    group_key: str,
    variant_name: str,
    run_ids: list[int],
    actor,
    comment: str = "",
    diff_hashes: dict[int, str] | None = None,
    publish_hash: str = "",
) -> BulkApproval:
    """Approve `variant_name` in each listed run whose diff is still in the group shown.

    Runs whose diff left the group since the page was drawn, whose diff is no longer the one
    in `diff_hashes` (when given: the hash each run was shown with), or that are already
    approved, are skipped and reported, never approved unseen. One decision per run, each on
    that run's own diff hash. A run whose outcome the campaign's `review.require` does not
    accept refuses the whole request (`HeldBackRefused`): those are approved one by one. The
    bulk event records how many runs of the group were held back.
    """
    if not group_key:
        raise Invalid("group_key: required", field="group_key")
    if not run_ids:
        raise Invalid("run_ids: choose at least one repository", field="run_ids")
    # A run listed twice is one run: its second copy was reported skipped ("already approved")
    # beside its approval.
    run_ids = list(dict.fromkeys(run_ids))
    _publish_text_check(campaign=Campaign.objects.get(pk=campaign.pk), publish_hash=publish_hash)
    if four_eyes_applies(campaign=campaign, user=actor):
        _four_eyes_refuse(
            actor=actor,
            target=campaign,
            context={"campaign_id": campaign.pk},
            payload={"group_key": group_key, "run_ids": run_ids[:100]},
        )
    variants = {
        v.run_id: v
        for v in Variant.objects.filter(
            run__campaign=campaign, run_id__in=run_ids, name=variant_name
        ).select_related("digest", "run", "run__campaign")
    }
    require = campaign_require(campaign)
    _held_back_refuse(variants=[variants[i] for i in run_ids if i in variants], require=require)
    held = bulk_held_back(
        campaign=campaign, variant_name=variant_name, require=require, group_key=group_key
    )
    result = BulkApproval(held_back=held.count, held_back_by=dict(held.by_reason))
    for run_id in run_ids:
        v = variants.get(run_id)
        digest = getattr(v, "digest", None) if v else None
        if v is None or digest is None or digest.group_key != group_key:
            result.skipped.append(RunSkipped(run_id, "its diff differs from the group"))
            continue
        if diff_hashes is not None and diff_hashes.get(run_id) != v.diff_sha256:
            result.skipped.append(RunSkipped(run_id, "its diff changed since the page was drawn"))
            continue
        try:
            change_approve(
                run=v.run,
                actor=actor,
                diff_hash=v.diff_sha256,
                variant=v,
                comment=comment,
                group_key=group_key,
                publish_hash=publish_hash,
            )
        except (Conflict, Invalid) as exc:
            # One run's refusal (approved meanwhile, diff changed) does not stop the others.
            result.skipped.append(RunSkipped(run_id, exc.message))
        else:
            result.approved.append(run_id)
    with transaction.atomic():
        audit_record(
            action="review.changes.bulk_approved",
            actor=actor,
            target=campaign,
            context={"campaign_id": campaign.pk},
            payload={
                "variant": variant_name,
                "group_key": group_key,
                "require": require,
                "approved": len(result.approved),
                "skipped": len(result.skipped),
                "held_back": result.held_back,
                "held_back_by": result.held_back_by,
            },
            reason=comment,
        )
    return result


def _held_back_refuse(*, variants: list[Variant], require: str) -> None:
    """Refuse a bulk approval naming a run whose outcome `review.require` does not accept."""
    held = [
        (v, held_reason(validation=v.validation, baseline=v.run.baseline))
        for v in variants
        if not require_allows(require=require, validation=v.validation, baseline=v.run.baseline)
    ]
    if held:
        shown = ", ".join(f"run {v.run_id} {reason}" for v, reason in held[:10])
        more = f" and {len(held) - 10} more" if len(held) > 10 else ""
        raise HeldBackRefused(
            f"run_ids: {len(held)} of these runs are held back by review.require ({require}): "
            f"{shown}{more}. Review them one by one.",
            field="run_ids",
        )


def _bound_text(*, review: RunReview, campaign: Campaign) -> tuple[dict, str]:
    """The text to publish the approval binds, and how ("approval", or "publish_request" for an
    approval from before texts were bound); refused naming the fields a revision changed."""
    approval = approval_standing(review)
    bound = approval.publish_text if approval is not None else None
    now = publish_text_for(campaign)
    if bound is None:
        return now.as_dict(), "publish_request"
    changed = publish_text_changes(bound, now)
    if changed:
        raise ReviewError(
            f"{', '.join(changed)} changed since this change was approved (a campaign "
            "revision): approve it again, with the new text, to publish it.",
            field=changed[0],
        )
    return bound, "approval"


def _approver_refused(*, run: RepoRun, review: RunReview) -> bool:
    """Whether the four-eyes rule now refuses the approval's approver: they may have become an
    author since approving (approved a preview's diff, then launched it; approved, then
    applied a revision). Such an approval does not count: publishing refuses it, and someone
    else may approve the change again."""
    approver = review.decided_by
    return approver is not None and four_eyes_applies(campaign=run.campaign, user=approver)


def _approver_check(*, run: RepoRun, review: RunReview) -> None:
    if _approver_refused(run=run, review=review):
        approver = review.decided_by
        raise ReviewError(
            f"{approver.get_username()} approved this change, and has since launched or revised "
            "this campaign: under the four-eyes rule someone else must approve it again."
        )


def change_publish(*, run: RepoRun, actor) -> Changeset:
    """Queue the approved change for publishing: a branch push and, where possible, a PR, with
    the text its approval bound (the spec's text must still be that text)."""
    campaign = Campaign.objects.get(pk=run.campaign_id)
    if campaign.launched_at is None:  # a preview's runs: "not a launch, publishes nothing"
        raise ReviewError(
            "This campaign has not been launched: a preview publishes nothing. Launch it first."
        )
    _cancelled_check(campaign)
    with transaction.atomic():
        review = _review_locked(run)
        chosen = Variant.objects.filter(pk=review.variant_id).first()
        if not review_is_approved(review, chosen):
            raise ReviewError(
                "Only approved changes are published; this one is not approved "
                "(or its diff changed after approval and needs approval again)."
            )
        _approver_check(run=run, review=review)
        if chosen.patch_truncated:
            raise ReviewError("The diff was cut at the size cap and cannot be published whole.")
        variant_secret_check(variant_id=chosen.pk)
        existing = Changeset.objects.select_for_update().filter(run_id=run.pk).first()
        text, bound_by = _bound_text(review=review, campaign=campaign)
        text_hash = publish_text_hash(text)
        branch = text["branch"]  # as approved, never the live spec's
        if (
            existing
            and existing.diff_hash == chosen.diff_sha256
            and existing.state not in (ChangesetState.FAILED,)
        ):
            if not _text_update_due(existing, text_hash=text_hash, bound_by=bound_by):
                return existing
            _branch_kept_check(existing, branch=branch)
            return _changeset_text_update(
                existing, run=run, variant=chosen, text=text, text_hash=text_hash, actor=actor
            )
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
                "publish_text": text,
                "publish_hash": text_hash,
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
                "publish_hash": text_hash,
                "publish_bound_by": bound_by,
            },
        )
        transaction.on_commit(lambda: tasks.changeset_push_task.delay(changeset.pk))
    return changeset


def _cancelled_check(campaign: Campaign) -> None:
    """A cancelled campaign publishes nothing more: cancelling stops its work, pushes too."""
    if campaign.state == CampaignState.CANCELLED:
        raise ReviewError(
            f"Campaign {campaign.name} is cancelled: it publishes nothing more.", field="campaign"
        )


def _branch_kept_check(changeset: Changeset, *, branch: str) -> None:
    """A published change stays on its branch (its pull request's head): a new text approved
    with another `changeset.branch` is refused rather than pushed to a branch not approved."""
    if changeset.branch != branch:
        raise ReviewError(
            f"This change is published on branch {changeset.branch}, and was approved again "
            f"with changeset.branch {branch}: a published change keeps its branch. Set "
            "changeset.branch back to publish its new text.",
            field="changeset.branch",
        )


def _text_update_due(changeset: Changeset, *, text_hash: str, bound_by: str) -> bool:
    """A published change approved again with a new text (a revision changed it): its branch
    and pull request still say the old one. Merged or closed, it is past updating."""
    return (
        bound_by == "approval"
        and changeset.publish_hash != text_hash
        and changeset.state not in (ChangesetState.MERGED, ChangesetState.CLOSED)
    )


def _changeset_text_update(
    changeset: Changeset, *, run: RepoRun, variant: Variant, text: dict, text_hash: str, actor
) -> Changeset:
    """Queue the changeset again with the text its new approval bound: the push makes its
    commit with the new message and author (replacing only this campaign's own commit) and
    updates the open pull request's title and body through the code host. In the caller's
    transaction, with its event."""
    previous = changeset.publish_hash or ""
    Changeset.objects.filter(pk=changeset.pk).update(
        state=ChangesetState.QUEUED,
        error="",
        publish_text=text,
        publish_hash=text_hash,
        published_by=actor,
    )
    changeset.refresh_from_db()
    audit_record(
        action="review.change.published",
        actor=actor,
        target=run,
        context=_context(run, variant),
        payload={
            "variant": variant.name,
            "diff_hash": changeset.diff_hash,
            "branch": changeset.branch,
            "remote": changeset.remote_url,
            "status": "queued",
            "publish_hash": text_hash,
            "publish_bound_by": "approval",
            "replaces_publish_hash": previous,
            "pull_request": changeset.pr_url,
        },
    )
    transaction.on_commit(lambda: tasks.changeset_push_task.delay(changeset.pk))
    return changeset


def changes_publish_approved(*, campaign: Campaign, actor) -> PublishRequests:
    """Publish every approved change of the campaign not yet published as approved: new ones,
    failed ones, and published ones approved again with a rerun's diff or a revision's text
    (their branch and open pull request are updated, one event each as a single publish)."""
    _cancelled_check(campaign)
    runs = (
        publish_all_runs(campaign=campaign).select_related("campaign", "repository").order_by("pk")
    )
    result = PublishRequests()
    for run in runs:
        try:
            change_publish(run=run, actor=actor)
        except ReviewError as exc:
            # A diff cut at the size cap is refused; the other runs are still published.
            result.refused.append(RunSkipped(run.pk, exc.message))
        else:
            result.queued.append(run.pk)
    return result


def changeset_push(*, changeset_id: int, last_attempt: bool = True) -> Changeset:
    """Push the changeset's commit and open its pull request; safe to run again. A transient
    failure raises (the task retries) unless this is the `last_attempt`: then it is recorded
    as the changeset's failure, so the change is not left queued for ever."""
    changeset = Changeset.objects.select_related("run", "run__campaign", "variant").get(
        pk=changeset_id
    )
    if changeset.state != ChangesetState.QUEUED:
        return changeset
    run, variant = changeset.run, changeset.variant
    text = changeset.publish_text  # bound when publishing was requested, never the live spec
    outcome, error, fields = "success", "", {}
    try:
        if variant is None or variant.diff_sha256 != changeset.diff_hash:
            raise PublishError("the variant changed after approval; approve it again")
        if not text:
            raise PublishError("no text to publish was bound to this change; publish it again")
        try:
            _cancelled_check(run.campaign)
        except ReviewError as exc:
            raise PublishError(exc.message) from None
        review = RunReview.objects.select_related("decided_by").filter(run_id=run.pk).first()
        if review is not None:
            try:
                _approver_check(run=run, review=review)
            except ReviewError as exc:
                raise PublishError(exc.message) from None
        host = codehosts.codehost_for_remote(changeset.remote_url)
        pushed_there = Changeset.objects.filter(
            remote_url=changeset.remote_url, branch=changeset.branch
        ).exclude(commit="")
        # Another campaign's branch (and pull request) is never replaced: its lease would
        # match, since Convoy pushed that commit, but not for this campaign.
        holder = (
            pushed_there.exclude(campaign_id=changeset.campaign_id)
            .select_related("campaign")
            .first()
        )
        if holder is not None:
            raise PublishError(
                f"branch {changeset.branch} of this repository holds campaign "
                f"{holder.campaign.name}'s change: give this campaign its own changeset.branch"
            )
        # The branch is this campaign's only at the commit it pushed there last: this
        # changeset's own earlier push (a republish after a rerun reuses its row), or another
        # run's of the campaign.
        last_pushed = pushed_there.order_by("-pk").values_list("commit", flat=True)
        replaces = last_pushed.first() or ""
        try:
            pushed = change_push(
                replaces=replaces,
                remote_url=changeset.remote_url,
                base_commit=run.base_commit,
                base_ref=run.ref,
                patch=bytes(variant.patch),
                branch=changeset.branch,
                message=text["commit_message"],
                author=text["author"],
                token=host[0].token if host is not None else "",
            )
        except PublishError as exc:
            # An older push of this changeset, in flight when this one was queued, moved the
            # branch and recorded its commit meanwhile: try again, leasing against that one.
            if exc.stale_lease and (last_pushed.first() or "") != replaces:
                raise PublishError(str(exc), transient=True) from None
            raise
        fields = {"commit": pushed.commit, "state": ChangesetState.PUSHED}
        if host is not None:
            adapter, slug = host
            pr = adapter.pull_request_upsert(
                repo=slug,
                head=changeset.branch,
                base=run.ref,
                title=text["title"],
                body=text["body"],
            )
            # The URL is shown as a link: only web addresses are kept.
            url = pr.url if pr.url.startswith(("https://", "http://")) else ""
            fields.update(pr_number=pr.number, pr_url=url, state=pr.state)
    except (PublishError, codehosts.CodeHostError) as exc:
        if getattr(exc, "transient", False) and "commit" not in fields and not last_attempt:
            raise
        outcome, error = "failure", str(exc)
        fields = {**fields, "state": ChangesetState.FAILED, "error": error}
    with transaction.atomic():
        # Only the row still holding what this push pushed: a republish (a new text, or a
        # rerun's new diff) queued during the push is left for its own push.
        updated = Changeset.objects.filter(
            pk=changeset.pk,
            state=ChangesetState.QUEUED,
            variant_id=changeset.variant_id,
            diff_hash=changeset.diff_hash,
            publish_hash=changeset.publish_hash,
        ).update(published_at=timezone.now(), refreshed_at=timezone.now(), **fields)
        if not updated and fields.get("commit"):
            _changeset_push_superseded(changeset, commit=fields["commit"], variant=variant)
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
                    "publish_hash": changeset.publish_hash or "",
                    "status": fields.get("state", ""),
                },
                reason=error,
            )
    changeset.refresh_from_db()
    return changeset


def _changeset_push_superseded(changeset: Changeset, *, commit: str, variant) -> None:
    """This push's content was replaced (republished) while it ran, but its commit is on the
    branch now. Record that commit, so the newer push's lease matches it, and leave the row
    queued for that push; queue it again when that push already failed on the old lease. In
    the caller's transaction, with its event."""
    current = Changeset.objects.select_for_update().get(pk=changeset.pk)
    if current.commit != changeset.commit:
        return  # a newer push of this row landed and recorded itself: the branch is past ours
    requeue = current.state == ChangesetState.FAILED
    Changeset.objects.filter(pk=current.pk).update(
        commit=commit, **({"state": ChangesetState.QUEUED, "error": ""} if requeue else {})
    )
    audit_record(
        action="review.change.published",
        actor=None,
        actor_type="system",
        on_behalf_of=changeset.published_by,
        target=changeset.run,
        outcome="failure",
        context=_context(changeset.run, variant),
        payload={
            "branch": changeset.branch,
            "commit": commit,
            "diff_hash": changeset.diff_hash,
            "publish_hash": changeset.publish_hash or "",
            "status": "superseded",
            "superseded_by_diff_hash": current.diff_hash,
            "superseded_by_publish_hash": current.publish_hash or "",
            "requeued": requeue,
        },
        reason="republished while this push ran; the newer push replaces this commit",
    )
    if requeue:
        transaction.on_commit(lambda: tasks.changeset_push_task.delay(current.pk))


def changesets_refresh(*, limit: int = 200) -> int:
    """Update the state and checks of open pull requests from their code host."""
    refreshed = 0
    open_states = (ChangesetState.DRAFT, ChangesetState.OPEN)
    for changeset in Changeset.objects.filter(
        state__in=open_states, pr_number__isnull=False
    ).order_by(F("refreshed_at").asc(nulls_first=True))[:limit]:
        host = codehosts.codehost_for_remote(changeset.remote_url)
        if host is None:
            continue
        adapter, slug = host
        try:
            pr = adapter.pull_request_get(repo=slug, number=changeset.pr_number)
            checks = adapter.checks_get(repo=slug, ref=pr.head_sha or changeset.commit)
        except codehosts.CodeHostError as exc:
            logger.warning("changeset %s refresh failed: %s", changeset.pk, exc)
            continue
        Changeset.objects.filter(pk=changeset.pk).update(
            state=pr.state, checks=checks, refreshed_at=timezone.now()
        )
        refreshed += 1
    return refreshed
