"""Launching a campaign over 10,000 registered repositories vs 10,000 bare Celery apply_async.

Convoy's figure covers what a manager waits for: runs created, dispatch started (the first
slots' tasks on the broker) and the campaign page rendered with the counts. The baseline sends
10,000 no-op tasks with `apply_async` to the same Redis broker. Memory: peak Python allocations
of the same launch at 1,000 and at 10,000 repositories (flat means it does not grow with N).

    .venv/bin/python benchmarks/campaign_launch.py [--repos 10000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from campaign_support import convoy

SPEC = """\
name: {name}
backend: bwrap
repos: {{tag: {tag}}}
max_parallel: 8
transform: {{run: "sed -i s/a/b/ README.md"}}
"""


def _repos(count: int, tag: str) -> None:
    from django.conf import settings

    from campaigns.models import Repository

    root = settings.REPO_ROOTS[0]
    Repository.objects.bulk_create(
        [
            Repository(url=f"file://{root}/{tag}/repo-{i:05d}", name=f"repo-{i:05d}", tags=[tag])
            for i in range(count)
        ],
        batch_size=2000,
    )


def _launch(manager, client, count: int, tag: str) -> tuple[float, float, float]:
    """Seconds for launch (runs + dispatch) and for the page; peak MiB of Python allocations."""
    from campaigns.models import RepoRun
    from campaigns.services import campaign_cancel, campaign_create, campaign_launch

    campaign = campaign_create(actor=manager, source=SPEC.format(name=tag, tag=tag))
    tracemalloc.start()
    started = time.perf_counter()
    campaign_launch(campaign=campaign, actor=manager)
    launched = time.perf_counter()
    page = client.get(f"/campaigns/{campaign.pk}/")
    shown = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert page.status_code == 200, page.status_code
    total = f'data-testid="count-pending">{count - 8:,}<'.encode()
    assert total in page.content, "the page does not show the pending runs"
    assert RepoRun.objects.filter(campaign=campaign).count() == count
    assert RepoRun.objects.filter(campaign=campaign, state="queued").count() == 8
    campaign_cancel(campaign=campaign, actor=manager)  # frees the slots for the next one
    return launched - started, shown - launched, peak


def _bare_apply_async(count: int) -> float:
    from config.celery import app

    queue = f"bench-bare-{time.time_ns()}"
    started = time.perf_counter()
    for i in range(count):
        app.send_task("bench.noop", args=(i,), queue=queue)
    elapsed = time.perf_counter() - started
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repos", type=int, default=10_000)
    args = parser.parse_args()
    n = args.repos
    with convoy("launch", CONVOY_MAX_PARALLEL_REPOS="8"):
        from django.contrib.auth.models import User
        from django.test import Client

        from accounts.services import user_create

        manager = user_create(username="bench-manager", role="manager", password="x" * 20)
        client = Client(HTTP_HOST="localhost")
        client.force_login(User.objects.get(pk=manager.pk))
        _repos(n // 10, "small")
        _repos(n, "large")
        # Warm-up: imports, connections, template compilation.
        _repos(50, "warm")
        _launch(manager, client, 50, "warm")
        _bare_apply_async(200)

        small_launch, small_page, small_peak = _launch(manager, client, n // 10, "small")
        launch_s, page_s, peak = _launch(manager, client, n, "large")
        bare_s = _bare_apply_async(n)

    convoy_s = launch_s + page_s
    print(f"repositories: {n:,}  (broker: Redis; dispatch cap 8 slots)")
    print(f"convoy launch (runs created + dispatch started): {launch_s * 1000:8.1f} ms")
    print(f"convoy campaign page with counts:                {page_s * 1000:8.1f} ms")
    print(f"convoy total:                                    {convoy_s * 1000:8.1f} ms")
    print(f"baseline {n:,} bare apply_async:               {bare_s * 1000:8.1f} ms")
    print(f"ratio convoy / baseline: {convoy_s / bare_s:.3f}x  (target <= 0.5x)")
    print(
        f"peak Python allocations during launch+page: {small_peak:.1f} MiB at {n // 10:,} repos, "
        f"{peak:.1f} MiB at {n:,} repos (ratio {peak / small_peak:.2f}x for 10x the repos; "
        f"{small_launch * 1000 + small_page * 1000:.0f} ms at {n // 10:,})"
    )


if __name__ == "__main__":
    main()
