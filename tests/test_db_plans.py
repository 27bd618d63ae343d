"""A connection's cached plans are made again once they are old (core/postgres): a plan made
while a table was empty no longer scans it whole once it has grown."""

import pytest
from django.db import connection

QUERY = "SELECT id FROM plans_probe WHERE id = %s"


def _seq_scans() -> int:
    """This transaction's sequential scans of the probe table so far."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq_scan FROM pg_stat_xact_all_tables WHERE relid = 'plans_probe'::regclass"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_plan_made_for_an_empty_table_is_made_again_once_old():
    assert connection.vendor == "postgresql"
    connection.ensure_connection()
    connection.plans_discard_at = float("inf")  # young plans, however slow the setup below
    with connection.cursor() as cursor:
        # A table of its own, empty and analyzed, as a new installation's tables are.
        cursor.execute("CREATE TEMP TABLE plans_probe (id bigint PRIMARY KEY, pad text)")
        cursor.execute("ANALYZE plans_probe")
        # psycopg prepares it at its sixth run; PostgreSQL keeps a generic plan after five more.
        for _ in range(12):
            cursor.execute(QUERY, [1])
        cursor.execute(
            "INSERT INTO plans_probe SELECT i, repeat('x', 100) FROM generate_series(1, 5000) i"
        )

    with connection.cursor() as cursor:
        before = _seq_scans()
        cursor.execute(QUERY, [4999])
        stale = _seq_scans() - before
    connection.plans_discard_at = 0.0  # the plans are older than PLANS_MAX_AGE_S
    with connection.cursor() as cursor:
        before = _seq_scans()
        cursor.execute(QUERY, [4999])
        assert cursor.fetchone() == (4999,)
        fresh = _seq_scans() - before

    assert stale == 1  # the kept plan reads the whole table
    assert fresh == 0  # made again: the primary key finds the row
    assert connection.plans_discard_at > 0  # and the next discard is due in PLANS_MAX_AGE_S
