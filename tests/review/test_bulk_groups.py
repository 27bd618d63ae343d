"""Bulk review lists a group's first members a slice at a time: the right runs, in order, past
decided and held-back ones, and without reading every run of a large campaign."""

import pytest
from django.db import connection, transaction

from campaigns.models import RepoRun, Validation, Variant
from review import require
from review.digests import variant_digests_refresh
from review.models import ReviewState, RunReview
from review.require import bulk_held_back_runs
from review.selectors import bulk_groups
from tests.factories import campaign_bulk_make


def _decide(runs, state) -> None:
    RunReview.objects.bulk_create(
        RunReview(run=r, campaign_id=r.campaign_id, state=state) for r in runs
    )


def _campaign(manager, runs: int):
    campaign = campaign_bulk_make(owner=manager, runs=runs, failed_every=0)
    variant_digests_refresh()  # what storing each diff does (the factory bulk-inserts them)
    return campaign


def _runs_read(cursor) -> int:
    """Rows of the runs table this connection has read and not yet reported to the statistics
    (by index or by scan): a difference of two readings counts what ran between them."""
    cursor.execute(
        "SELECT coalesce(idx_tup_fetch, 0) + seq_tup_read FROM pg_stat_xact_user_tables "
        "WHERE relname = %s",
        [RepoRun._meta.db_table],
    )
    return cursor.fetchone()[0]


def _in_order(campaign, name: str) -> list[RepoRun]:
    variants = Variant.objects.filter(run__campaign=campaign, name=name).order_by("id")
    return [v.run for v in variants.select_related("run")]


@pytest.mark.shapes("embedded", "production")
@pytest.mark.django_db
def test_a_groups_members_skip_decided_runs_across_slices(manager, monkeypatch):
    monkeypatch.setattr(require, "MEMBERS_PAGE", 3)  # slices of 3, 12, 48 digests
    campaign = _campaign(manager, 40)
    runs = _in_order(campaign, "a")
    _decide(runs[:5], ReviewState.APPROVED)  # the whole first slice and more
    _decide(runs[7:9], ReviewState.REJECTED)
    _decide(runs[10:11], ReviewState.PICKED)  # picked: still needs a decision
    undecided = [r for k, r in enumerate(runs) if not (k < 5 or 7 <= k < 9)]

    (group,) = bulk_groups(campaign=campaign, variant_name="a", repos_shown=7)

    assert group.count == len(undecided) == 33
    assert [r.pk for r in group.runs] == [r.pk for r in undecided[:7]]
    assert group.more == 33 - 7
    assert all(h for _, h in group.members)


@pytest.mark.shapes("embedded", "production")
@pytest.mark.django_db
def test_a_groups_held_back_runs_are_listed_in_order_across_slices(manager, monkeypatch):
    monkeypatch.setattr(require, "MEMBERS_PAGE", 2)
    monkeypatch.setattr(require, "HELD_BACK_LIMIT", 5)
    campaign = _campaign(manager, 30)
    runs = _in_order(campaign, "a")
    failing = runs[3::4]  # 7 runs whose variant "a" fails its validation
    Variant.objects.filter(run__in=failing, name="a").update(validation=Validation.FAILED)
    _decide(failing[:1], ReviewState.REJECTED)
    (group,) = bulk_groups(campaign=campaign, variant_name="a")

    held = bulk_held_back_runs(campaign=campaign, variant_name="a", group_key=group.group_key)

    assert [r.pk for r, _ in held] == [r.pk for r in failing[1:6]]
    assert {reason for _, reason in held} == {"fails"}  # no baseline run
    assert group.count == 30 - 7


@pytest.mark.django_db(transaction=True)
def test_listing_a_large_groups_members_reads_a_slice_of_the_runs(manager, monkeypatch):
    monkeypatch.setattr(require, "MEMBERS_PAGE", 100)
    campaign = _campaign(manager, 2000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")

    with transaction.atomic(), connection.cursor() as cursor:
        before = _runs_read(cursor)  # pending figures of this connection's earlier statements
        (group,) = bulk_groups(campaign=campaign, variant_name="a", repos_shown=50)
        read = _runs_read(cursor) - before

    assert group.count == 2000 and len(group.runs) == 50
    # Before: the count and the members each joined every run of the campaign (2,000 each).
    assert read <= 300, f"listing 50 members read {read} rows of the runs table"
