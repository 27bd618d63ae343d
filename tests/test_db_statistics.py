"""The beat's statistics job (PostgreSQL): a table whose rows changed since its last ANALYZE
gets fresh statistics, so the planner estimates what is there; a table that barely changed is
left alone. This machine's test server runs with autovacuum off: nothing else analyzes here."""

import pytest
from django.db import connection

from campaigns.models import RepoRun, Repository, RunState
from campaigns.tasks import statistics_refresh_task
from core.postgres.statistics import tables_analyze_stale
from tests.factories import campaign_make

pytestmark = pytest.mark.django_db(transaction=True)


def _estimated_running() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN (FORMAT JSON) SELECT id FROM campaigns_reporun WHERE state = %s", ["running"]
        )
        return cursor.fetchone()[0][0]["Plan"]["Plan Rows"]


def _flush() -> None:
    """This connection's table counters, visible to the next statement (PostgreSQL 15+
    otherwise publishes them up to a second later)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")


def _runs(campaign, n: int, state: str) -> None:
    repos = Repository.objects.bulk_create(
        Repository(url=f"file:///srv/git/stats-{i}.git", name=f"stats-{i}") for i in range(n)
    )
    RepoRun.objects.bulk_create(
        RepoRun(campaign=campaign, repository=repo, ref="main", state=state) for repo in repos
    )


def test_a_table_whose_rows_changed_gets_statistics_the_planner_then_uses(manager):
    assert connection.vendor == "postgresql"
    campaign = campaign_make(owner=manager)
    _runs(campaign, 3000, RunState.PENDING)
    tables_analyze_stale()  # the launch: every run pending
    RepoRun.objects.filter(
        campaign=campaign, id__in=RepoRun.objects.order_by("id").values("id")[:2000]
    ).update(state=RunState.RUNNING)
    _flush()
    assert _estimated_running() < 100  # what the launch's statistics say

    statistics_refresh_task()  # as the beat runs it

    assert 1500 < _estimated_running() < 2500


def test_a_table_that_barely_changed_is_left_alone(manager):
    campaign = campaign_make(owner=manager)
    _runs(campaign, 3000, RunState.PENDING)
    _flush()
    assert "public.campaigns_reporun" in tables_analyze_stale()
    RepoRun.objects.filter(pk__in=RepoRun.objects.order_by("id").values("id")[:100]).update(
        state=RunState.RUNNING
    )  # 100 of 3,000: under 50 + 10%
    _flush()

    assert "public.campaigns_reporun" not in tables_analyze_stale()
