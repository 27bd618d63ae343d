"""Undo of a review decision: withdrawn for a short time after it was made, never deleted.

The decision row stays (marked withdrawn, with who and when) and gets its own audit event; the
run's review goes back to what the decisions before it say.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from audit.record import audit_record
from core.errors import PermissionDenied
from review.models import Changeset, ChangesetState, Decision, DecisionKind, ReviewState, RunReview
from review.services import ReviewError

UNDO_WINDOW = timedelta(minutes=2)


def decision_undoable(*, decision: Decision | None, user) -> bool:
    """True when `user` may still withdraw `decision` (shown as an Undo button)."""
    return bool(
        decision is not None
        and decision.withdrawn_at is None
        and decision.actor_id == user.pk
        and timezone.now() - decision.created_at <= UNDO_WINDOW
    )


def _restore(review: RunReview, previous: Decision | None) -> None:
    """Set the review to what `previous` (the last decision still standing) decided."""
    if previous is None:
        review.state, review.variant_id = ReviewState.UNREVIEWED, None
        review.picked_hash = review.approved_hash = review.comment = ""
        review.decided_by, review.decided_at = None, None
        return
    review.state = {
        DecisionKind.PICK: ReviewState.PICKED,
        DecisionKind.APPROVE: ReviewState.APPROVED,
        DecisionKind.REJECT: ReviewState.REJECTED,
    }[previous.kind]
    review.variant_id = previous.variant_id
    review.picked_hash = previous.diff_hash if previous.kind != DecisionKind.REJECT else ""
    review.approved_hash = previous.diff_hash if previous.kind == DecisionKind.APPROVE else ""
    review.comment = previous.comment
    review.decided_by_id, review.decided_at = previous.actor_id, previous.created_at


def decision_withdraw(*, decision: Decision, actor) -> RunReview:
    """Withdraw the actor's own latest decision on a run within UNDO_WINDOW of making it."""
    if decision.actor_id != actor.pk:
        raise PermissionDenied(
            "Only the reviewer who made a decision can undo it.", capability="decision_withdraw"
        )
    with transaction.atomic():
        RunReview.objects.get_or_create(
            run_id=decision.run_id, defaults={"campaign_id": decision.run.campaign_id}
        )
        review = RunReview.objects.select_for_update().get(run_id=decision.run_id)
        decision = Decision.objects.select_for_update().get(pk=decision.pk)
        if decision.withdrawn_at is not None:
            raise ReviewError("This decision was already undone.")
        if timezone.now() - decision.created_at > UNDO_WINDOW:
            raise ReviewError("Too late to undo this decision: make a new decision instead.")
        standing = Decision.objects.filter(run_id=decision.run_id, withdrawn_at__isnull=True)
        if standing.filter(pk__gt=decision.pk).exists():
            raise ReviewError("A later decision was made on this change: undo that one first.")
        published = Changeset.objects.filter(run_id=decision.run_id)
        if published.exclude(state=ChangesetState.FAILED).exists():
            raise ReviewError("This change is already published; it cannot be undone here.")
        decision.withdrawn_at, decision.withdrawn_by = timezone.now(), actor
        decision.save(update_fields=["withdrawn_at", "withdrawn_by"])
        _restore(review, standing.filter(pk__lt=decision.pk).order_by("-pk").first())
        review.save()
        run = decision.run
        audit_record(
            action="review.decision.withdrawn",
            actor=actor,
            target=run,
            context={"campaign_id": run.campaign_id, "run_id": run.pk},
            payload={
                "decision_id": decision.pk,
                "kind": decision.kind,
                "variant": decision.variant_name,
                "diff_hash": decision.diff_hash,
                "review_state": review.state,
            },
        )
    return review
