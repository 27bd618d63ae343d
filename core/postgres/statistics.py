"""Planner statistics kept fresh by Convoy itself (PostgreSQL).

PostgreSQL plans each statement from its tables' statistics, which ANALYZE gathers. Autovacuum
runs ANALYZE once a table's rows changed by more than `autovacuum_analyze_threshold` +
`autovacuum_analyze_scale_factor` times its rows (50 + 10% by default). Where autovacuum is off, or
lags behind a campaign that fills its tables quickly, the statistics stay those of the
campaign's launch (every run pending, few variants), and a plan made from them can read every
finished run for each one that ends: twice in issue 20's 100,000-run simulation, a cost that
grew with the campaign came from such a plan (docs/benchmarks.md). `tables_analyze_stale`,
run by the beat (`campaigns.statistics`), does what autovacuum's ANALYZE would, with its
default threshold: a table autovacuum keeps fresh is never due here.
"""

from __future__ import annotations

import logging

from django.db import OperationalError, connections, transaction

logger = logging.getLogger(__name__)

ANALYZE_THRESHOLD = 50  # autovacuum_analyze_threshold's default
ANALYZE_SCALE_FACTOR = 0.1  # autovacuum_analyze_scale_factor's default
LOCK_TIMEOUT = "1s"  # a table another ANALYZE or VACUUM holds is left for the next round


def tables_analyze_stale(*, using: str = "default") -> list[str]:
    """ANALYZE each table of the database whose rows changed by more than autovacuum's default
    threshold since its last ANALYZE (by anyone); the tables analyzed. Nothing elsewhere than
    PostgreSQL. ANALYZE reads a sample of each table and blocks neither reads nor writes."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return []
    # ANALYZE of a table this role may not analyze only warns and does nothing: with two roles
    # (core/postgres/roles.py) that is every table before PostgreSQL 17's MAINTAIN privilege,
    # and autovacuum keeps those.
    allowed = (
        "pg_has_role(c.relowner, 'USAGE') OR pg_has_role((SELECT datdba FROM pg_database "
        "WHERE datname = current_database()), 'USAGE')"
    )
    if connection.pg_version >= 170000:
        allowed += " OR has_table_privilege(c.oid, 'MAINTAIN')"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT format('%%I.%%I', s.schemaname, s.relname) FROM pg_stat_user_tables s "  # noqa: S608
            "JOIN pg_class c ON c.oid = s.relid "
            "WHERE s.n_mod_since_analyze > %s + %s * greatest(c.reltuples, 0) "
            f"AND ({allowed}) ORDER BY s.n_mod_since_analyze DESC",
            [ANALYZE_THRESHOLD, ANALYZE_SCALE_FACTOR],
        )
        due = [row[0] for row in cursor.fetchall()]
    analyzed = []
    for table in due:
        try:
            with transaction.atomic(using=using), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                # A name PostgreSQL quoted itself (format %I), from its own catalog.
                cursor.execute(f"ANALYZE {table}")
        except OperationalError as exc:  # the lock timeout: someone else is on it
            logger.info("statistics: %s left for the next round: %s", table, exc)
            continue
        analyzed.append(table)
    if analyzed:
        logger.info("statistics: analyzed %s", ", ".join(analyzed))
    return analyzed
