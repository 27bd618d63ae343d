"""Review page server time: the campaign dashboard, the review queue, a run's comparison page
and bulk review at 10,000 runs, against the same pages at 100 runs in the same run (target p95
<= 150 ms for the campaign dashboard, the review queue and the comparison page, 400 ms for every
page), and how fast bulk-review digests are written (they are computed when a diff is stored,
never on a page view). The dashboard and the queue read counts the database keeps as rows change
(campaigns.counters); the first read after a bulk insert folds its deltas, in the warm-up.

    .venv/bin/python benchmarks/review_pages.py [--runs 10000] [--requests 60]

Server time is the Django request/response cycle through the test client (view, queries,
template), without the network. Uses a scratch PostgreSQL database (BENCH_DATABASE_URL's
server) that it drops at the end.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from scratch_db import scratch_django, scratch_drop  # noqa: E402


def timings(client, url: str, n: int, *, warm: bool = True) -> list[float]:
    for _ in range(3 if warm else 0):  # warm caches (templates, lexers, session)
        assert client.get(url).status_code == 200, url
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(url)
        out.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, url
    return out


def count_rows(campaign) -> int:
    from campaigns.models import CountDelta

    return CountDelta.objects.filter(campaign_id=campaign.pk).count()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    name = f"convoy_bench_review_pages_{os.getpid()}"
    try:
        scratch_django(name, ALLOWED_HOSTS="testserver")
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client
        from django.test.utils import setup_test_environment
        from django.urls import reverse

        from accounts.services import user_create
        from campaigns.models import RepoRun, Variant
        from review.digests import variant_digests_refresh
        from tests.factories import campaign_bulk_make

        setup_test_environment()
        call_command("migrate", verbosity=0)
        owner = user_create(username="bench-manager", role="manager", password="x" * 20)
        viewer = user_create(username="bench-reviewer", role="reviewer", password="x" * 20)
        started = time.perf_counter()
        small = campaign_bulk_make(owner=owner, runs=100)
        big = campaign_bulk_make(owner=owner, runs=args.runs)
        print(
            f"setup: {args.runs + 100:,} runs with 3 variants each in "
            f"{time.perf_counter() - started:.1f} s"
        )
        # The factory bulk-inserts variants, so no digest was written with them: the backfill
        # writes them here (what storing each diff does one at a time).
        started = time.perf_counter()
        written = variant_digests_refresh()
        took = time.perf_counter() - started
        print(f"digests: {written:,} written in {took:.1f} s ({written / took:,.0f}/s)")
        assert written == Variant.objects.exclude(diff_sha256="").count()
        with connection.cursor() as cur:
            cur.execute("ANALYZE")
        client = Client()
        client.force_login(viewer)
        for campaign in (small, big):  # warm caches (templates, lexers, session), fold deltas
            timings(client, reverse("review-dashboard", args=[campaign.pk]), 0)
        print(f"count deltas per campaign after warm-up: {count_rows(small)}, {count_rows(big)}")
        # Requests alternate between the two campaigns so machine noise hits both alike.
        results: dict[tuple[str, str], list[float]] = {}
        urls: dict[str, dict[str, str]] = {}
        labels = {"100 runs": small, f"{args.runs:,} runs": big}
        for label, campaign in labels.items():
            run = RepoRun.objects.filter(campaign=campaign, state="succeeded").order_by("-id")[0]
            urls[label] = {
                "campaign dashboard": reverse("review-dashboard", args=[campaign.pk]),
                "review queue": reverse("review-queue", args=[campaign.pk]),
                "comparison page": reverse("review-compare", args=[campaign.pk, run.pk]),
                "bulk review": reverse("review-bulk", args=[campaign.pk]),
            }
        pages = ("campaign dashboard", "review queue", "comparison page", "bulk review")
        for page in pages:
            for _ in range(args.requests):
                for label in labels:
                    results.setdefault((page, label), []).extend(
                        timings(client, urls[label][page], 1, warm=False)
                    )
        print(f"{'page':<20} {'runs':>12} {'p50 ms':>8} {'p95 ms':>8}")
        for (page, label), values in results.items():
            print(f"{page:<20} {label:>12} {pct(values, 50):8.1f} {pct(values, 95):8.1f}")
        big_label = f"{args.runs:,} runs"
        for page in pages:
            p95_big = pct(results[(page, big_label)], 95)
            p95_small = pct(results[(page, "100 runs")], 95)
            print(
                f"{page}: p95 at {big_label} / p95 at 100 runs (baseline) = "
                f"{p95_big / p95_small:.2f}x"
            )
        # The target names the campaign dashboard, the review queue and the comparison page.
        worst = max(
            pct(results[(page, big_label)], 95)
            for page in ("campaign dashboard", "review queue", "comparison page")
        )
        verdict = "meets" if worst <= 150 else "MISSES"
        print(
            f"worst p95 of the dashboard, queue and comparison pages at {big_label}: "
            f"{worst:.1f} ms ({verdict} the 150 ms target); "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        slowest = max(pct(results[(page, big_label)], 95) for page in pages)
        verdict = "meets" if slowest <= 400 else "MISSES"
        print(f"slowest p95 of any review page at {big_label}: {slowest:.1f} ms ({verdict} 400 ms)")
        connection.close()
    finally:
        scratch_drop(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
