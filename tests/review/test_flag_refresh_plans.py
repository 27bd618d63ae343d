"""The queue-flag triggers read only the runs a statement touched, however many runs of the
campaign have succeeded and whatever PostgreSQL's statistics say (without autovacuum they can
be those of the campaign's launch, when every run was pending)."""

import pytest
from django.db import connection, transaction

from campaigns.models import RepoRun, Repository, RunState, Variant, VariantState
from review.counts import review_counts, review_counts_fresh
from tests.factories import campaign_make

pytestmark = pytest.mark.django_db(transaction=True)

RUNS, SUCCEEDED = 2000, 1900


def _runs_read(cursor) -> int:
    """Rows of the runs table this transaction has read so far (by index or by scan)."""
    cursor.execute(
        "SELECT coalesce(idx_tup_fetch, 0) + seq_tup_read FROM pg_stat_xact_user_tables "
        "WHERE relname = %s",
        [RepoRun._meta.db_table],
    )
    return cursor.fetchone()[0]


def test_a_variant_insert_refreshes_its_own_run_not_every_succeeded_one(manager):
    campaign = campaign_make(owner=manager, variants=("a",))
    repos = Repository.objects.bulk_create(
        Repository(url=f"file:///srv/git/flags-{i}.git", name=f"flags-{i}") for i in range(RUNS)
    )
    runs = RepoRun.objects.bulk_create(
        RepoRun(campaign=campaign, repository=repo, ref="main", state=RunState.PENDING)
        for repo in repos
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {RepoRun._meta.db_table}")  # statistics: every run pending
    RepoRun.objects.filter(pk__in=[r.pk for r in runs[:SUCCEEDED]]).update(state=RunState.SUCCEEDED)
    running = runs[SUCCEEDED]
    RepoRun.objects.filter(pk=running.pk).update(state=RunState.RUNNING)

    with transaction.atomic(), connection.cursor() as cursor:
        before = _runs_read(cursor)
        Variant.objects.create(run=running, name="a", position=0, state=VariantState.PENDING)
        read = _runs_read(cursor) - before

    assert read <= 2, f"the variant's insert read {read} rows of the runs table"
    assert review_counts(campaign=campaign) == review_counts_fresh(campaign=campaign)


def test_a_variant_of_a_succeeded_run_still_moves_its_run_into_the_queue(manager):
    campaign = campaign_make(owner=manager, variants=("a",))
    run = RepoRun.objects.create(
        campaign=campaign,
        repository=Repository.objects.create(url="file:///srv/git/one.git", name="one"),
        ref="main",
        state=RunState.SUCCEEDED,
    )
    assert review_counts(campaign=campaign)["todo"] == 0
    Variant.objects.create(
        run=run, name="a", position=0, state=VariantState.COMPLETED, diff_sha256="ab" * 32
    )
    assert review_counts(campaign=campaign)["todo"] == 1
    assert review_counts(campaign=campaign) == review_counts_fresh(campaign=campaign)
