"""Campaign counts (runs by state, review buckets) read from the deltas the triggers write.

Database triggers add a `CountDelta` row in the transaction of every change to the counted
rows (campaigns migration 0007, review 0004), so pages read a handful of rows per campaign
instead of counting its runs. Reads fold a campaign's deltas into one row once they pile up
(more than COMPACT_AT): the sum is unchanged, so a reader never sees a different count, and
deltas committed meanwhile are left for the next fold. `counts_correct` adds the difference to
a fresh count (the repair behind `manage.py campaign_recount`).
"""

from __future__ import annotations

from django.db import connection, transaction
from django.db.models import Count, Max, Sum

from campaigns.models import COUNT_COLUMNS, CountDelta, RepoRun, RunState

COMPACT_AT = 200
_SUMS = ", ".join(f"COALESCE(SUM({c}), 0)" for c in COUNT_COLUMNS)
_COLUMNS = ", ".join(COUNT_COLUMNS)
_TABLE = CountDelta._meta.db_table


def counts_get(*, campaign_ids: list[int]) -> dict[int, dict[str, int]]:
    """Each campaign's counts (every column, zero when none), in one query."""
    out = {cid: dict.fromkeys(COUNT_COLUMNS, 0) for cid in campaign_ids}
    rows = (
        CountDelta.objects.filter(campaign_id__in=campaign_ids)
        .values("campaign_id")
        .annotate(rows=Count("id"), **{c: Sum(c) for c in COUNT_COLUMNS})
        .order_by()
    )
    for row in rows:
        out[row["campaign_id"]] = {c: row[c] or 0 for c in COUNT_COLUMNS}
        if row["rows"] > COMPACT_AT:
            counts_compact(campaign_id=row["campaign_id"])
    return out


def campaign_counts_get(*, campaign_id: int) -> dict[str, int]:
    return counts_get(campaign_ids=[campaign_id])[campaign_id]


def counts_compact(*, campaign_id: int) -> None:
    """Replace the campaign's committed deltas by one row with their sum."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH gone AS (DELETE FROM {_TABLE} WHERE campaign_id = %s RETURNING *)
                INSERT INTO {_TABLE} (campaign_id, {_COLUMNS})
                SELECT %s, {_SUMS} FROM gone HAVING COUNT(*) > 0
                """,  # noqa: S608 - table and column names are constants
                [campaign_id, campaign_id],
            )
        return
    # SQLite has one writer at a time: sum and delete up to the last id seen.
    with transaction.atomic():
        last = CountDelta.objects.filter(campaign_id=campaign_id).aggregate(m=Max("id"))["m"]
        if last is None:
            return
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {_TABLE} (campaign_id, {_COLUMNS}) SELECT %s, {_SUMS} "  # noqa: S608
                f"FROM {_TABLE} WHERE campaign_id = %s AND id <= %s",
                [campaign_id, campaign_id, last],
            )
        CountDelta.objects.filter(campaign_id=campaign_id, id__lte=last).delete()


def run_counts_fresh(*, campaign_id: int) -> dict[str, int]:
    """Runs by state counted from the runs themselves (what the deltas must add up to)."""
    counts = dict.fromkeys(RunState.values, 0)
    counts.update(
        RepoRun.objects.filter(campaign_id=campaign_id)
        .values_list("state")
        .annotate(n=Count("id"))
        .order_by()
    )
    return counts


def counts_correct(*, campaign_id: int, fresh: dict[str, int]) -> dict[str, int]:
    """Add a delta that makes the campaign's counts of the columns in `fresh` equal to it;
    return the difference that was added (empty when they were right).

    Run inside a transaction that holds the rows `fresh` was counted from still (the caller
    locks them), so no trigger's delta falls between the count and the correction."""
    with transaction.atomic():
        kept = campaign_counts_get(campaign_id=campaign_id)
        diff = {c: n - kept[c] for c, n in fresh.items() if n != kept[c]}
        if diff:
            CountDelta.objects.create(campaign_id=campaign_id, **diff)
    return diff
