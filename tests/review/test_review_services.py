"""Decisions: pick, approve with four eyes, reject, stale refusal, bulk approve, publish."""

import hashlib
import io
import json

import pytest
from django.core.management import call_command
from django.db import transaction

from audit.models import AuditEvent
from campaigns.models import Variant
from core.errors import Invalid
from review.counts import review_counts
from review.digests import variant_digests_refresh
from review.models import Changeset, Decision, ReviewState, RunReview, VariantDigest
from review.selectors import bulk_groups, review_queue
from review.services import (
    FourEyesRefused,
    ReviewError,
    StaleDecision,
    change_approve,
    change_publish,
    change_reject,
    changes_bulk_approve,
    changeset_push,
    variant_pick,
)
from tests.factories import (
    campaign_make,
    git,
    patch_for,
    remote_with_change,
    run_make,
    variant_make,
    variant_rerun,
)

pytestmark = pytest.mark.shapes("embedded", "production")


def _events(action):
    return [json.loads(e.body) for e in AuditEvent.objects.filter(action=action).order_by("id")]


@pytest.fixture
def three(manager):
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign)
    variants = [
        variant_make(run=run, name=n, position=i, patch=patch_for("a.py", "x = 1", f"x = {i}"))
        for i, n in enumerate(("conservative", "aggressive", "broken"))
    ]
    return campaign, run, variants


def test_pick_is_recorded_with_chosen_alternatives_and_hash_and_can_change(three, reviewer):
    _campaign, run, (a, b, _c) = three
    variant_pick(run=run, variant=a, actor=reviewer, diff_hash=a.diff_sha256)
    review = variant_pick(run=run, variant=b, actor=reviewer, diff_hash=b.diff_sha256)
    assert review.state == ReviewState.PICKED and review.variant_id == b.pk
    (_first, second) = _events("review.variant.picked")
    assert second["payload"]["chosen"] == "aggressive"
    assert second["payload"]["alternatives"] == ["conservative", "broken"]
    assert second["payload"]["diff_hash"] == b.diff_sha256
    assert [d.kind for d in Decision.objects.filter(run=run)] == ["pick", "pick"]


def test_approve_then_pick_refused_until_rejected(three, reviewer):
    _, run, (a, b, _c) = three
    change_approve(run=run, actor=reviewer, variant=a, diff_hash=a.diff_sha256, comment="ok")
    with pytest.raises(ReviewError, match="already approved"):
        variant_pick(run=run, variant=b, actor=reviewer, diff_hash=b.diff_sha256)
    (event,) = _events("review.change.approved")
    assert event["payload"]["diff_hash"] == a.diff_sha256
    assert event["reason"] == "ok"
    with pytest.raises(Invalid, match="comment"):
        change_reject(run=run, actor=reviewer, comment="  ")
    change_reject(run=run, actor=reviewer, comment="wrong style", diff_hash=a.diff_sha256)
    assert RunReview.objects.get(run=run).state == ReviewState.REJECTED
    assert _events("review.change.rejected")[0]["reason"] == "wrong style"
    variant_pick(run=run, variant=b, actor=reviewer, diff_hash=b.diff_sha256)


def test_four_eyes_stops_the_launcher_and_is_audited(three, manager, admin_user):
    _campaign, run, (a, *_rest) = three
    with pytest.raises(FourEyesRefused, match="Four-eyes"):
        change_approve(run=run, actor=manager, variant=a, diff_hash=a.diff_sha256)
    assert not RunReview.objects.filter(run=run, state=ReviewState.APPROVED).exists()
    denied = AuditEvent.objects.get(action="review.change.approved")
    assert denied.outcome == "denied"
    # An admin who did not launch it may approve; a campaign may turn the rule off.
    change_approve(run=run, actor=admin_user, variant=a, diff_hash=a.diff_sha256)
    relaxed = campaign_make(owner=manager, four_eyes=False)
    run2 = run_make(campaign=relaxed)
    v = variant_make(run=run2, name="a", patch=patch_for("b.py", "1", "2"))
    assert change_approve(run=run2, actor=manager, variant=v, diff_hash=v.diff_sha256).state == (
        ReviewState.APPROVED
    )


def test_stale_pick_and_approve_are_refused_and_a_rerun_needs_approval_again(three, reviewer):
    campaign, run, (a, *_rest) = three
    seen = a.diff_sha256
    variant_rerun(a, patch_for("a.py", "x = 1", "x = 42"))
    with pytest.raises(StaleDecision, match="changed since you loaded the page"):
        variant_pick(run=run, variant=a, actor=reviewer, diff_hash=seen)
    change_approve(run=run, actor=reviewer, variant=a, diff_hash=a.diff_sha256)
    assert review_counts(campaign=campaign)["approved"] == 1
    # A rerun after approval: the approval no longer covers the diff.
    variant_rerun(a, patch_for("a.py", "x = 1", "x = 43"))
    counts = review_counts(campaign=campaign)
    assert counts["approved"] == 0 and counts["todo"] == 1
    assert [r.pk for r in review_queue(campaign=campaign, which="todo")] == [run.pk]
    with pytest.raises(ReviewError, match="not approved"):
        change_publish(run=run, actor=reviewer)
    change_approve(run=run, actor=reviewer, diff_hash=a.diff_sha256)
    assert review_counts(campaign=campaign)["approved"] == 1


def test_bulk_approval_covers_identical_diffs_and_skips_a_different_one(manager, reviewer):
    campaign = campaign_make(owner=manager, variants=("only",))
    same = [run_make(campaign=campaign) for _ in range(4)]
    for i, run in enumerate(same):
        # Same change, other blob ids and line numbers in each repository.
        variant_make(
            run=run,
            name="only",
            patch=patch_for("t.py", "old()", "new()", line=i + 3, blob=f"{i}" * 7),
        )
    odd = run_make(campaign=campaign)
    variant_make(run=odd, name="only", patch=patch_for("t.py", "old()", "newer()"))
    groups = bulk_groups(campaign=campaign, variant_name="only")
    assert [g.count for g in groups] == [4, 1]
    big = groups[0]
    assert sorted(r.pk for r in big.runs) == sorted(r.pk for r in same)
    result = changes_bulk_approve(
        campaign=campaign,
        group_key=big.group_key,
        variant_name="only",
        run_ids=[r.pk for r in big.runs] + [odd.pk],
        actor=reviewer,
        comment="same fix",
    )
    assert sorted(result.approved) == sorted(r.pk for r in same)
    assert [s.run_id for s in result.skipped] == [odd.pk]
    assert Decision.objects.filter(kind="approve", group_key=big.group_key).count() == 4
    assert not RunReview.objects.filter(run=odd, state=ReviewState.APPROVED).exists()
    with pytest.raises(FourEyesRefused):
        changes_bulk_approve(
            campaign=campaign,
            group_key=groups[1].group_key,
            variant_name="only",
            run_ids=[odd.pk],
            actor=manager,
        )
    assert AuditEvent.objects.filter(action="review.change.approved", outcome="denied").exists()


def test_publish_pushes_the_approved_diff_and_audits_it(tmp_path, manager, reviewer):
    bare, base, patch = remote_with_change(
        tmp_path, before={"m.py": "x = 1\n"}, after={"m.py": "x = 2\n"}
    )

    campaign = campaign_make(
        owner=manager,
        variants=("only",),
        changeset={"branch": "convoy/x", "commit_message": "Set x", "author": "Bot <b@x>"},
    )
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    v = variant_make(run=run, name="only", patch=patch)
    change_approve(run=run, actor=reviewer, variant=v, diff_hash=v.diff_sha256)
    changeset = change_publish(run=run, actor=reviewer)
    assert changeset.state == "queued"
    changeset = changeset_push(changeset_id=changeset.pk)
    assert changeset.state == "pushed" and changeset.commit
    assert git(bare, "diff", "--binary", base, "convoy/x") == patch
    assert git(bare, "log", "-1", "--format=%an|%s", "convoy/x").decode().strip() == "Bot|Set x"
    requested, done = _events("review.change.published")
    assert requested["payload"]["diff_hash"] == v.diff_sha256
    assert done["payload"]["commit"] == changeset.commit
    assert Changeset.objects.get(run=run).state == "pushed"

    # A rerun changed the diff: approved and published again, the branch Convoy pushed is
    # replaced (the push is leased on the commit it pushed there).
    smaller = patch.replace(b"+x = 2", b"+x = 3")
    Variant.objects.filter(pk=v.pk).update(
        patch=smaller, diff_sha256=hashlib.sha256(smaller).hexdigest()
    )
    v.refresh_from_db()
    change_approve(run=run, actor=reviewer, variant=v, diff_hash=v.diff_sha256)
    again = changeset_push(changeset_id=change_publish(run=run, actor=reviewer).pk)
    assert again.state == "pushed", again.error
    assert again.commit != changeset.commit
    assert git(bare, "show", "convoy/x:m.py") == b"x = 3\n"


def test_runs_that_changed_nothing_are_not_waiting_for_review(manager):
    campaign = campaign_make(owner=manager, variants=("only",))
    changed, unchanged = run_make(campaign=campaign), run_make(campaign=campaign)
    variant_make(run=changed, name="only", patch=patch_for("a.py", "1", "2"))
    variant_make(run=unchanged, name="only", patch=b"")
    assert review_counts(campaign=campaign)["todo"] == 1
    assert [r.pk for r in review_queue(campaign=campaign, which="todo")] == [changed.pk]
    assert {r.pk for r in review_queue(campaign=campaign, which="all")} == {
        changed.pk,
        unchanged.pk,
    }


def test_digests_are_kept_when_a_diff_is_stored_and_roll_back_with_it(manager):
    campaign = campaign_make(owner=manager, variants=("only",))
    run = run_make(campaign=campaign)
    v = variant_make(run=run, name="only", patch=patch_for("d.py", "1", "2"))
    first = VariantDigest.objects.get(variant=v)
    assert first.diff_sha256 == v.diff_sha256 and first.campaign_id == campaign.pk
    variant_rerun(v, patch_for("d.py", "1", "3"))
    second = VariantDigest.objects.get(variant=v)
    assert second.diff_sha256 == v.diff_sha256 and second.group_key != first.group_key
    # The digest is written in the storing transaction: a rollback takes it back too.
    with pytest.raises(RuntimeError), transaction.atomic():
        variant_rerun(v, patch_for("d.py", "1", "4"))
        raise RuntimeError("the pipeline failed after storing the diff")
    assert VariantDigest.objects.get(variant=v).diff_sha256 == second.diff_sha256
    variant_rerun(v, b"")  # a rerun that changed nothing has no group
    assert not VariantDigest.objects.filter(variant=v).exists()


def test_backfill_command_groups_diffs_stored_before_digests(manager):
    campaign = campaign_make(owner=manager, variants=("only",))
    runs = [run_make(campaign=campaign) for _ in range(3)]
    for i, run in enumerate(runs):
        variant_make(run=run, name="only", patch=patch_for("e.py", "a", "b", line=i + 1))
    VariantDigest.objects.filter(campaign=campaign).delete()  # rows from before the receiver
    assert bulk_groups(campaign=campaign, variant_name="only") == []
    out = io.StringIO()
    call_command("review_digests_backfill", "--campaign", campaign.name, stdout=out)
    assert "3 digest(s) written" in out.getvalue()
    assert [g.count for g in bulk_groups(campaign=campaign, variant_name="only")] == [3]
    assert variant_digests_refresh(campaign=campaign) == 0  # nothing left to do
