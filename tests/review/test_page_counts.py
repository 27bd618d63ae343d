"""The counts the dashboard and the review queue show are kept as rows change (database
triggers, campaigns.counters, review.counts): they equal a fresh count after every kind of
change, a repair puts them right, and reading them costs the same at 10 runs and at 200."""

import subprocess

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from campaigns.counters import campaign_counts_get, counts_compact, run_counts_fresh
from campaigns.models import Campaign, CampaignState, CountDelta, RepoRun, RunState
from campaigns.services import campaign_cancel, campaign_create, campaign_launch, campaign_retry
from review.counts import campaign_recount, review_counts, review_counts_fresh, run_state_counts
from review.models import QueueFlags, ReviewState, RunReview
from review.selectors import decision_latest
from review.services import change_approve, change_publish, change_reject, variant_pick
from review.undo import decision_withdraw
from tests.campaigns.test_lifecycle import SPEC  # its campaign: setup fails where asked
from tests.factories import (
    PASSWORD,
    campaign_bulk_make,
    campaign_make,
    patch_for,
    repos_make,
    run_make,
    runs_final,
    variant_make,
    variant_rerun,
)
from tests.support import wait_for


def _agree(campaign) -> dict:
    """The kept counts equal a fresh count of the rows; returns the review buckets."""
    kept = review_counts(campaign=campaign)
    assert kept == review_counts_fresh(campaign=campaign)
    runs = run_state_counts(campaign=campaign)["runs"]
    assert runs == run_counts_fresh(campaign_id=campaign.pk)
    return kept


def _login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.mark.shapes("embedded", "production")
def test_counts_follow_reviews_reruns_publishing_and_undo(manager, reviewer):
    campaign = campaign_make(owner=manager, variants=("a", "b"))
    runs = [run_make(campaign=campaign) for _ in range(4)]
    variants = {}
    for i, run in enumerate(runs):
        for pos, name in enumerate(("a", "b")):
            variants[i, name] = variant_make(
                run=run, name=name, position=pos, patch=patch_for("m.py", "x", f"{name}{i}")
            )
    idle = run_make(campaign=campaign)  # changed nothing: never waits for review
    variant_make(run=idle, name="a", patch=b"")
    run_make(campaign=campaign, state=RunState.FAILED)
    assert _agree(campaign) == {"todo": 4, "approved": 0, "rejected": 0, "published": 0, "all": 5}

    a0, a1, b2 = variants[0, "a"], variants[1, "a"], variants[2, "b"]
    variant_pick(run=runs[2], variant=b2, actor=reviewer, diff_hash=b2.diff_sha256)
    change_approve(run=runs[0], actor=reviewer, variant=a0, diff_hash=a0.diff_sha256)
    change_approve(run=runs[1], actor=reviewer, variant=a1, diff_hash=a1.diff_sha256)
    change_reject(run=runs[3], actor=reviewer, comment="not this")
    assert _agree(campaign) == {"todo": 1, "approved": 2, "rejected": 1, "published": 0, "all": 5}

    change_publish(run=runs[0], actor=reviewer)
    assert _agree(campaign)["published"] == 1
    # A rerun that changes the approved diff puts the run back in the queue.
    variant_rerun(a1, patch_for("m.py", "x", "other"))
    assert _agree(campaign) == {"todo": 2, "approved": 0, "rejected": 1, "published": 1, "all": 5}
    # Undo of the rejection: back to waiting.
    decision_withdraw(decision=decision_latest(run=runs[3], actor=reviewer), actor=reviewer)
    assert RunReview.objects.get(run=runs[3]).state != ReviewState.REJECTED
    assert _agree(campaign)["rejected"] == 0
    # A run leaving "succeeded" (a retry or a revision) leaves every bucket; deleting runs too.
    RepoRun.objects.filter(pk=runs[2].pk).update(state=RunState.PENDING)
    assert _agree(campaign)["all"] == 4
    RepoRun.objects.filter(pk__in=[runs[1].pk, runs[3].pk]).delete()
    assert _agree(campaign) == {"todo": 0, "approved": 0, "rejected": 0, "published": 1, "all": 2}
    assert campaign_recount(campaign=campaign) == {}  # nothing to repair


@pytest.mark.shapes("embedded", "production")
def test_recount_repairs_lost_counts_and_folding_keeps_the_sum(manager, reviewer):
    campaign = campaign_bulk_make(owner=manager, runs=30)
    before = _agree(campaign)
    assert before["todo"] == 27 and run_state_counts(campaign=campaign)["runs"]["failed"] == 3
    counts_compact(campaign_id=campaign.pk)
    assert CountDelta.objects.filter(campaign_id=campaign.pk).count() == 1
    assert _agree(campaign) == before
    # Writes that bypass the triggers (or a restore of one table) are what a repair is for.
    CountDelta.objects.filter(campaign_id=campaign.pk).delete()
    QueueFlags.objects.filter(campaign_id=campaign.pk)[:1].get().delete()
    assert review_counts(campaign=campaign)["todo"] == 0
    call_command("campaign_recount", campaign=str(campaign.pk))
    assert _agree(campaign) == before
    assert QueueFlags.objects.filter(campaign_id=campaign.pk, flags=1).count() == 27
    assert campaign_recount(campaign=campaign) == {}


PAGES = ("review-dashboard", "review-queue")


def _page(client, name, campaign):
    cache.clear()  # the uncached path (the burndown series is cached between moves)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(reverse(name, args=[campaign.pk]))
    assert response.status_code == 200
    return len(ctx.captured_queries), response.content.decode()


@pytest.mark.shapes("embedded", "production")
def test_pages_show_the_kept_counts_with_as_many_queries_at_10_and_200_runs(
    client, manager, reviewer
):
    small = campaign_bulk_make(owner=manager, runs=10)
    big = campaign_bulk_make(owner=manager, runs=200)
    _login(client, reviewer)
    for name in PAGES:
        for campaign in (small, big):  # warm caches; fold the deltas of the bulk insert
            _page(client, name, campaign)
        n_small, _ = _page(client, name, small)
        n_big, _ = _page(client, name, big)
        assert n_small == n_big, f"{name}: {n_small} queries at 10 runs, {n_big} at 200"
    _, html = _page(client, "review-dashboard", big)
    assert 'data-testid="review-todo">180<' in html
    assert 'data-testid="count-succeeded">180<' in html
    assert 'data-testid="count-failed">20<' in html
    _, html = _page(client, "review-queue", big)
    assert "needs a decision (180)" in html and "page 1 of 4" in html


# --- a real campaign (bubblewrap): runs, failures, retry, cancel ------------------------------


def _git(path, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        cwd=path,
        check=True,
        capture_output=True,
    )


@pytest.mark.django_db(transaction=True)
def test_counts_equal_a_fresh_count_through_a_real_campaign_retry_and_cancel(
    celery_worker, manager, reviewer, client
):
    tag, paths = repos_make(4)
    (paths[0] / "broken").write_text("setup refuses\n")
    _git(paths[0], "add", "-A")
    _git(paths[0], "commit", "-qm", "break setup")
    setup = '"if [ -f broken ]; then cat broken; exit 3; fi"'
    campaign = campaign_create(
        actor=manager, source=SPEC.format(name="counted", tag=tag, parallel=2, setup=setup)
    )
    campaign_launch(campaign=campaign, actor=manager)
    runs_final(campaign, timeout=120)
    assert run_state_counts(campaign=campaign)["runs"]["failed"] == 1
    assert _agree(campaign)["todo"] == 3

    run = RepoRun.objects.filter(campaign=campaign, state=RunState.SUCCEEDED).first()
    variant = run.variants.get()
    change_approve(run=run, actor=reviewer, variant=variant, diff_hash=variant.diff_sha256)
    assert _agree(campaign)["approved"] == 1

    _git(paths[0], "rm", "-q", "broken")
    _git(paths[0], "commit", "-qm", "fix setup")
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert len(campaign_retry(campaign=campaign, actor=manager)) == 1
    runs_final(campaign, timeout=120)
    assert _agree(campaign) == {"todo": 3, "approved": 1, "rejected": 0, "published": 0, "all": 4}

    # Cancel a campaign while runs are in every state: running, queued, pending.
    tag, _ = repos_make(4)
    slow = campaign_create(
        actor=manager, source=SPEC.format(name="cut", tag=tag, parallel=1, setup="sleep 60")
    )
    campaign_launch(campaign=slow, actor=manager)
    wait_for(
        lambda: RepoRun.objects.filter(campaign=slow, state=RunState.RUNNING).exists(),
        timeout=60,
        what="a run running",
    )
    _agree(slow)
    campaign_cancel(campaign=slow, actor=manager)
    runs_final(slow, timeout=60)
    assert Campaign.objects.get(pk=slow.pk).state == CampaignState.CANCELLED
    assert run_state_counts(campaign=slow)["runs"]["cancelled"] == 4
    _agree(slow)
    assert campaign_counts_get(campaign_id=slow.pk)["running"] == 0

    _login(client, reviewer)
    html = client.get(reverse("review-dashboard", args=[campaign.pk])).content.decode()
    assert 'data-testid="review-approved">1<' in html and 'data-testid="review-todo">3<' in html
    for target in (campaign, slow):
        assert campaign_recount(campaign=target) == {}
