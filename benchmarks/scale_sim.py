"""Scale simulation: N runs through the real dispatcher, Celery worker, PostgreSQL and audit trail,
with the SIMULATION backend (sandboxes/backends/sim.py: canned results, nothing executed).

Production shape: a scratch PostgreSQL database, Redis, a `celery worker` subprocess (prefork),
the sealer every second in this process as beat would run it. Reports runs/s over time, rows and
bytes stored per run, database size, audit sealing lag, dashboard and review queue p95 at the
final size, worker RSS over time, and `audit_verify` speed over the whole trail. Baseline in the
same run: the first sample window (throughput and RSS at the start against the end).

    .venv/bin/python benchmarks/scale_sim.py [--runs 100000] [--variants 1] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from pathlib import Path

from campaign_support import (
    _tree,
    convoy,
    cpu_s,
    postgres_cpu_s,
    worker_ready,
    worker_start,
    worker_stop,
)

SPEC = """\
name: scale-sim
backend: sim
repos: {{tag: sim}}
max_parallel: {parallel}
transform: {{run: "sed -i 's/assertEquals(/assertEqual(/g' test_calc.py"}}
{variants}"""


def _rss_mb(pid: int) -> float:
    """Current resident set of the worker's largest process (the parent or one pool process)."""
    peak = 0.0
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class _Sealer(threading.Thread):
    """What beat does in production: audit_seal every second; records the oldest unsealed
    event's age at each pass (the sealing lag)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.lags: list[float] = []

    def run(self) -> None:
        from django.db import connection

        from audit.seal import audit_seal

        while not self.stop.wait(1.0):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT extract(epoch FROM now() - min(e.occurred_at)) FROM audit_auditevent e "
                    "WHERE e.id > coalesce((SELECT max(event_pk) FROM audit_auditlink), 0)"
                )
                lag = cursor.fetchone()[0]
            self.lags.append(float(lag or 0.0))
            audit_seal(wait=True)
        connection.close()


def _pages(campaign, reviewer, requests: int) -> dict[str, tuple[float, float]]:
    from django.test import Client
    from django.urls import reverse

    client = Client()
    client.force_login(reviewer)
    out = {}
    for label, name in (
        ("campaign dashboard", "review-dashboard"),
        ("review queue", "review-queue"),
    ):
        url = reverse(name, args=[campaign.pk])
        for _ in range(3):
            assert client.get(url).status_code == 200, url
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            assert client.get(url).status_code == 200, url
            times.append((time.perf_counter() - started) * 1000)
        out[label] = (_pct(times, 50), _pct(times, 95))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--variants", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="worker pool processes")
    parser.add_argument("--parallel", type=int, default=8, help="campaign max_parallel")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()

    extra = {
        "CONVOY_SANDBOX_SIM": "1",
        "CONVOY_MAX_PARALLEL_REPOS": str(args.parallel),
        "ALLOWED_HOSTS": "testserver",
    }
    with convoy("scale", **extra) as env:
        from django.db import connection
        from django.test.utils import setup_test_environment

        from accounts.services import user_create
        from audit.verify import audit_verify
        from campaigns.models import Campaign, RepoRun, Repository
        from campaigns.services import campaign_create, campaign_launch

        setup_test_environment()
        manager = user_create(username="sim-manager", role="manager", password="x" * 20)
        reviewer = user_create(username="sim-reviewer", role="reviewer", password="x" * 20)
        started = time.perf_counter()
        for start in range(0, args.runs, 10_000):
            Repository.objects.bulk_create(
                [
                    Repository(url=f"file:///sim/repo-{i}.git", name=f"repo-{i}", tags=["sim"])
                    for i in range(start, min(args.runs, start + 10_000))
                ]
            )
        variants = ""
        if args.variants > 1:
            variants = "variants:\n" + "".join(
                f"  - {{name: v{i}, env: {{}}}}\n" for i in range(args.variants)
            )
        campaign = campaign_create(
            actor=manager, source=SPEC.format(parallel=args.parallel, variants=variants)
        )
        print(
            f"setup: {args.runs:,} repositories in {time.perf_counter() - started:.1f} s; "
            f"worker prefork x {args.concurrency}, max_parallel {args.parallel}, "
            f"{args.variants} variant(s) per run",
            flush=True,
        )
        log = Path(env["CONVOY_DATA_DIR"]) / "worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        worker = worker_start(env, concurrency=args.concurrency, log=log, pool="prefork")
        sealer = _Sealer()
        samples = []  # (elapsed s, runs final, worker RSS MiB)
        try:
            worker_ready(worker)  # the clock starts once the worker's pool is up
            sealer.start()
            pg_before = postgres_cpu_s()
            started = time.perf_counter()
            launched = campaign_launch(campaign=campaign, actor=manager)
            print(f"launched in {time.perf_counter() - started:.1f} s", flush=True)
            runs = RepoRun.objects.filter(campaign=launched)
            last = started
            while True:
                time.sleep(0.5)
                now = time.perf_counter()
                if now - last < args.sample_s:
                    if not runs.exclude(state__in=["succeeded", "failed", "cancelled"]).exists():
                        break
                    continue
                last = now
                done = runs.filter(state__in=["succeeded", "failed", "cancelled"]).count()
                samples.append((now - started, done, _rss_mb(worker.pid)))
                print(
                    f"  {now - started:6.0f} s: {done:,} runs final, worker RSS "
                    f"{samples[-1][2]:.0f} MiB, audit lag {(sealer.lags or [0.0])[-1]:.1f} s",
                    flush=True,
                )
                if done >= args.runs:
                    break
            elapsed = time.perf_counter() - started
            samples.append((elapsed, args.runs, _rss_mb(worker.pid)))
            pg_cpu = postgres_cpu_s() - pg_before  # the sealer's and this script's queries too
            worker_cpu, _ = cpu_s(worker.pid)
        finally:
            worker_stop(worker)
            sealer.stop.set()
            sealer.join()
        failed = runs.filter(state="failed").count()
        print(
            f"runs: {args.runs:,} in {elapsed:.1f} s = {args.runs / elapsed:.1f} runs/s; "
            f"failed {failed}"
        )
        walls = [
            (r.finished_at - r.started_at).total_seconds() * 1000
            for r in runs.only("started_at", "finished_at")
            if r.finished_at and r.started_at
        ]
        print(
            f"run wall (claim to final): p50 {_pct(walls, 50):.0f} ms, "
            f"p95 {_pct(walls, 95):.0f} ms; "
            f"CPU per run: worker {worker_cpu / args.runs * 1000:.1f} ms, "
            f"PostgreSQL {pg_cpu / args.runs * 1000:.1f} ms"
        )
        if failed:
            print(f"  first failure: {runs.filter(state='failed').first().error[:300]}")
        if len(samples) >= 3:
            (t0, d0, _), (t1, d1, _) = samples[0], samples[1]
            (ta, da, _), (tb, db, _) = samples[-3], samples[-2]
            print(
                f"throughput: first window {(d1 - d0) / (t1 - t0):.1f} runs/s, "
                f"last window {(db - da) / (tb - ta):.1f} runs/s (ratio last/first "
                f"{((db - da) / (tb - ta)) / max((d1 - d0) / (t1 - t0), 1e-9):.2f}x)"
            )
        rss = [s[2] for s in samples]
        print(
            f"worker RSS (largest process): first sample {rss[0]:.0f} MiB, max {max(rss):.0f} MiB, "
            f"last {rss[-1]:.0f} MiB; growth {rss[-1] - rss[0]:+.0f} MiB"
        )
        if sealer.lags:
            print(
                f"audit sealing lag (oldest unsealed event, sampled each second): "
                f"p50 {_pct(sealer.lags, 50):.1f} s, max {max(sealer.lags):.1f} s"
            )
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
            cursor.execute(
                "SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM "
                "pg_stat_user_tables WHERE n_live_tup > 0 ORDER BY 3 DESC"
            )
            tables = cursor.fetchall()
            cursor.execute("SELECT pg_database_size(current_database())")
            db_size = cursor.fetchone()[0]
        total_rows = sum(t[1] for t in tables)
        total_bytes = sum(t[2] for t in tables)
        print(
            f"stored: {total_rows / args.runs:.1f} rows and "
            f"{total_bytes / args.runs / 1024:.1f} KiB "
            f"per run (tables with indexes); database size {db_size / 2**20:.0f} MiB"
        )
        for name, rows, size in tables[:12]:
            print(f"  {name:<34} {rows / args.runs:7.2f} rows/run {size / args.runs:9.0f} B/run")
        campaign = Campaign.objects.get(pk=campaign.pk)
        for page, (p50, p95) in _pages(campaign, reviewer, args.requests).items():
            verdict = "meets" if p95 <= 150 else "MISSES"
            print(
                f"{page} at {args.runs:,} runs: p50 {p50:.1f} ms, p95 {p95:.1f} ms "
                f"({verdict} the 150 ms target)"
            )
        started = time.perf_counter()
        report = audit_verify(jobs=1)
        took = time.perf_counter() - started
        print(
            f"audit_verify --jobs 1: {report.checked:,} events in {took:.1f} s = "
            f"{report.checked / took:,.0f} events/s; ok={report.ok}"
        )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
