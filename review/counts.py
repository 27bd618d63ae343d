"""The counts on the dashboard and the queue: runs by state and runs per review bucket.

Read from the counts the database keeps as rows change (campaigns.counters), so a page costs
the same at 100 runs and at 100,000. `review_counts_fresh` counts the same buckets from the rows
(slow on a large campaign: tests and repairs), and `campaign_recount` repairs the kept counts
and each run's flags from the rows.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Count

from campaigns.counters import campaign_counts_get, counts_correct, run_counts_fresh
from campaigns.models import RUN_FINAL_STATES, Campaign, RepoRun, RunState
from review.models import QueueFlags
from review.selectors import queue_bucket_q, text_changed_count

# Bit of each bucket in QueueFlags.flags (review migration 0004 uses the same).
BUCKET_BITS = {"todo": 1, "approved": 2, "rejected": 4, "published": 8}


def review_counts(*, campaign: Campaign) -> dict[str, int]:
    """How many finished runs are in each queue filter ("all": every succeeded run)."""
    counts = campaign_counts_get(campaign_id=campaign.pk)
    return {**{b: counts[b] for b in BUCKET_BITS}, "all": counts[RunState.SUCCEEDED]}


def review_counts_shown(*, campaign: Campaign) -> dict[str, int]:
    """The counts the queue and dashboard show: the kept ones, and "approved, text changed"
    (not kept: the text is the campaign's, not the run's)."""
    return {
        **review_counts(campaign=campaign),
        "text_changed": text_changed_count(campaign=campaign),
    }


def review_counts_fresh(*, campaign: Campaign) -> dict[str, int]:
    """The same counts from the rows: one aggregate over the campaign's succeeded runs."""
    counts = RepoRun.objects.filter(campaign=campaign, state=RunState.SUCCEEDED).aggregate(
        **{b: Count("id", filter=queue_bucket_q(b)) for b in BUCKET_BITS}, all=Count("id")
    )
    return counts


def run_state_counts(*, campaign: Campaign) -> dict:
    """Runs by state (every state present), how many finished, and the percentage."""
    counts = campaign_counts_get(campaign_id=campaign.pk)
    runs = {s: counts[s] for s in RunState.values}
    total = sum(runs.values())
    final = sum(runs[s] for s in RUN_FINAL_STATES)
    return {
        "runs": runs,
        "total": total,
        "final": final,
        "percent": int(100 * final / total) if total else 0,
    }


def _flags_fresh(*, campaign: Campaign) -> dict[int, int]:
    flags: dict[int, int] = {}
    succeeded = RepoRun.objects.filter(campaign=campaign, state=RunState.SUCCEEDED)
    for bucket, bit in BUCKET_BITS.items():
        for pk in succeeded.filter(queue_bucket_q(bucket)).values_list("pk", flat=True):
            flags[pk] = flags.get(pk, 0) | bit
    return flags


def campaign_recount(*, campaign: Campaign) -> dict[str, int]:
    """Make the kept counts and every run's flags agree with the rows; return what changed
    (count name -> difference added, and "flags": runs whose flags were rewritten).

    The campaign's runs are locked meanwhile: run moves, and (on PostgreSQL) review and
    changeset writes, whose triggers lock the run first, wait until the repair commits.
    """
    with transaction.atomic():
        list(RepoRun.objects.select_for_update().filter(campaign=campaign).values_list("pk"))
        fresh = _flags_fresh(campaign=campaign)
        kept = dict(
            QueueFlags.objects.filter(campaign_id=campaign.pk).values_list("run_id", "flags")
        )
        wrong = {pk for pk in fresh.keys() | kept.keys() if fresh.get(pk, 0) != kept.get(pk, 0)}
        QueueFlags.objects.filter(run_id__in=wrong).delete()
        QueueFlags.objects.bulk_create(
            [
                QueueFlags(run_id=pk, campaign_id=campaign.pk, flags=fresh[pk])
                for pk in wrong
                if fresh.get(pk)
            ],
            batch_size=2000,
        )
        buckets = {b: sum(1 for f in fresh.values() if f & bit) for b, bit in BUCKET_BITS.items()}
        diff = counts_correct(
            campaign_id=campaign.pk,
            fresh={**run_counts_fresh(campaign_id=campaign.pk), **buckets},
        )
    return {**diff, **({"flags": len(wrong)} if wrong else {})}
