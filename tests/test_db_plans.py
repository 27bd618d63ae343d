"""A connection's cached plans are made again once they are old (core/postgres): a plan made
while a table was empty no longer scans it whole once it has grown."""

import pytest
from django.db import connection

from campaigns.models import RepoRun, Repository
from core.postgres import base as plans
from tests.factories import campaign_make

QUERY = "SELECT id FROM campaigns_reporun WHERE id = %s"


def _seq_scans() -> int:
    """This transaction's sequential scans of the runs table so far."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'campaigns_reporun'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_plan_made_for_an_empty_table_is_made_again_once_old(manager):
    assert connection.vendor == "postgresql"
    connection.ensure_connection()
    connection.plans_discard_at = float("inf")  # young plans, however slow the setup below
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE campaigns_reporun")  # empty, as a new installation's is
        # psycopg prepares it at its sixth run; PostgreSQL keeps a generic plan after five more.
        for _ in range(12):
            cursor.execute(QUERY, [1])
    campaign = campaign_make(owner=manager)
    repos = Repository.objects.bulk_create(
        Repository(url=f"file:///srv/git/plans-{i}.git", name=f"plans-{i}") for i in range(3000)
    )
    runs = RepoRun.objects.bulk_create(
        RepoRun(campaign=campaign, repository=repo, ref="main") for repo in repos
    )

    with connection.cursor() as cursor:
        before = _seq_scans()
        cursor.execute(QUERY, [runs[-1].pk])
        stale = _seq_scans() - before
    connection.plans_discard_at = 0.0  # the plans are older than PLANS_MAX_AGE_S
    with connection.cursor() as cursor:
        before = _seq_scans()
        cursor.execute(QUERY, [runs[-1].pk])
        fresh = _seq_scans() - before

    assert stale == 1  # the kept plan reads the whole table
    assert fresh == 0  # made again: the primary key finds the run
    assert connection.plans_discard_at > 0
    assert plans.PLANS_MAX_AGE_S <= 60
