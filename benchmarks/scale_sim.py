"""Scale simulation: N runs through the real dispatcher, Celery worker, PostgreSQL and audit trail,
with the SIMULATION backend (sandboxes/backends/sim.py: canned results, nothing executed).

Production shape: a scratch PostgreSQL database, Redis, a `celery worker` subprocess (prefork),
a `manage.py serve` web process, the sealer every second in this process as beat would run it.
Reports runs/s over time, rows and bytes stored per run, database size, audit sealing lag,
dashboard and review queue p95 at the final size (rendered in process and fetched over HTTP from
the web process), worker and web RSS over time, and `audit_verify` speed over the whole trail.
Baselines in the same run: the first sample window (throughput and RSS at the start against the
end) and `audit_verify` with one process against its default --jobs.

--deadline-s stops waiting after that many seconds from the launch: the rest of the campaign is
cancelled through the real service and every figure is stated for the runs that finished.

Point BENCH_DATABASE_URL at a PostgreSQL server of its own: the sealer links only events older
than every transaction open on the whole server, so another session's long test transactions
on a shared server hold sealing back (the lag measured is then theirs, not Convoy's).

    .venv/bin/python benchmarks/scale_sim.py [--runs 100000] [--variants 1] [--concurrency 4]
        [--deadline-s 6000] [--out figures.json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from campaign_support import (
    ROOT,
    _tree,
    convoy,
    cpu_s,
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
FINAL = ["succeeded", "failed", "cancelled"]
ACTIVE = ["pending", "queued", "running"]
PAGES = (("campaign dashboard", "review-dashboard"), ("review queue", "review-queue"))


def _rss_mb(pid: int) -> float:
    """Current resident set of the largest process of a tree (the parent or one pool process)."""
    peak = 0.0
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
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
                # By primary key from the chain's last link: a min(occurred_at) over the
                # unsealed rows walked the whole trail's time index (O(events) each second).
                cursor.execute(
                    "SELECT extract(epoch FROM now() - min(occurred_at)) FROM (SELECT occurred_at "
                    "FROM audit_auditevent WHERE id > coalesce((SELECT max(event_pk) FROM "
                    "audit_auditlink), 0) ORDER BY id LIMIT 1000) unsealed"
                )
                lag = cursor.fetchone()[0]
            self.lags.append(float(lag or 0.0))
            audit_seal(wait=True)
        connection.close()


class _Web:
    """`manage.py serve` (daphne) in its own process, as `make run` starts it, signed in as the
    reviewer through a session stored in the database."""

    def __init__(self, env: dict, log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log = log
        self.cookie = ""

    def wait_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("web exited:\n" + self.log.read_text()[-2000:])
            with contextlib.suppress(OSError):
                if self._get("/login/")[0] in (200, 302):  # 302: signed in already
                    return
            time.sleep(0.2)
        raise RuntimeError("the web process did not answer in time")

    def _get(self, path: str) -> tuple[int, float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        started = time.perf_counter()
        try:
            conn.request("GET", path, headers={"Cookie": self.cookie} if self.cookie else {})
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        return response.status, (time.perf_counter() - started) * 1000

    def page_ms(self, path: str) -> float:
        status, ms = self._get(path)
        if status != 200:  # a redirect to the login page would time the wrong page
            raise RuntimeError(f"GET {path} over HTTP answered {status}")
        return ms

    def rss_mb(self) -> float:
        return _rss_mb(self.proc.pid)

    def stop(self) -> None:
        worker_stop(self.proc)


def _urls(campaign) -> dict[str, str]:
    from django.urls import reverse

    return {label: reverse(name, args=[campaign.pk]) for label, name in PAGES}


def _pages(campaign, reviewer, requests: int, web: _Web) -> dict[str, dict[str, float]]:
    """p50/p95 of each page rendered in this process (Django's test client) and over HTTP."""
    from django.test import Client

    client = Client()
    client.force_login(reviewer)
    out = {}
    for label, url in _urls(campaign).items():
        for _ in range(3):
            assert client.get(url).status_code == 200, url
            web.page_ms(url)
        local, remote = [], []
        for _ in range(requests):
            started = time.perf_counter()
            assert client.get(url).status_code == 200, url
            local.append((time.perf_counter() - started) * 1000)
            remote.append(web.page_ms(url))
        out[label] = {
            "p50_ms": _pct(local, 50),
            "p95_ms": _pct(local, 95),
            "http_p50_ms": _pct(remote, 50),
            "http_p95_ms": _pct(remote, 95),
        }
    return out


def _server_cpu_s() -> float:
    """CPU seconds of this database's PostgreSQL server: the postmaster with its live backends
    and the exited ones it reaped. Other servers on the host (other sessions' test clusters)
    are left out, unlike campaign_support.postgres_cpu_s."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    stat = Path(f"/proc/{backend}/stat").read_text()
    own, children = cpu_s(int(stat.rsplit(")", 1)[1].split()[1]))
    return own + children


def _sample(t: float, done: int, worker, web: _Web, urls: list[str]) -> tuple[float, ...]:
    """(elapsed s, runs final, worker RSS MiB, web RSS MiB, then each page's ms over HTTP)."""
    return (t, done, _rss_mb(worker.pid), web.rss_mb(), *(web.page_ms(url) for url in urls))


def _tables() -> dict[str, tuple[int, int]]:
    """Live rows and bytes (with indexes and TOAST) of every table that holds rows."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute(
            "SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM "
            "pg_stat_user_tables WHERE n_live_tup > 0"
        )
        return {name: (rows, size) for name, rows, size in cursor.fetchall()}


def _per_run(
    at_launch: dict, at_end: dict, created: int, finished: int
) -> list[tuple[str, float, float]]:
    """Rows and bytes per run by table: what the launch wrote, per run created, plus what
    running wrote since, per run finished. When every run finished this is total / runs; when a
    deadline cut the campaign short, the runs that never started do not dilute the figure."""
    out = []
    for name in at_launch.keys() | at_end.keys():
        rows0, bytes0 = at_launch.get(name, (0, 0))
        rows1, bytes1 = at_end.get(name, (0, 0))
        rows = rows0 / created + (rows1 - rows0) / max(finished, 1)
        size = bytes0 / created + (bytes1 - bytes0) / max(finished, 1)
        out.append((name, rows, size))
    return sorted(out, key=lambda t: -t[2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--variants", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="worker pool processes")
    parser.add_argument("--parallel", type=int, default=8, help="campaign max_parallel")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument(
        "--deadline-s", type=float, default=None, help="cancel the rest after this long"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    extra = {
        "CONVOY_SANDBOX_SIM": "1",
        "CONVOY_MAX_PARALLEL_REPOS": str(args.parallel),
        "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost",
    }
    fig: dict = {"runs_requested": args.runs, "args": {k: str(v) for k, v in vars(args).items()}}
    with convoy("scale", **extra) as env:
        from django.conf import settings
        from django.db import connection
        from django.test import Client
        from django.test.utils import setup_test_environment

        from accounts.services import user_create
        from audit.seal import audit_seal
        from audit.verify import audit_verify
        from campaigns.models import Campaign, RepoRun, Repository
        from campaigns.services import campaign_cancel, campaign_create, campaign_launch

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
        data = Path(env["CONVOY_DATA_DIR"])
        data.mkdir(parents=True, exist_ok=True)
        web = _Web(env, data / "web.log")
        session = Client()
        session.force_login(reviewer)  # a database session the web process accepts
        web.cookie = (
            f"{settings.SESSION_COOKIE_NAME}={session.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        worker = worker_start(
            env, concurrency=args.concurrency, log=data / "worker.log", pool="prefork"
        )
        sealer = _Sealer()
        samples = []  # (elapsed s, runs final, worker RSS MiB, web RSS MiB, dashboard ms, queue ms)
        cut_short = False
        try:
            web.wait_up()
            worker_ready(worker)  # the clock starts once the worker's pool is up
            sealer.start()
            pg_before = _server_cpu_s()
            started = time.perf_counter()
            launched = campaign_launch(campaign=campaign, actor=manager)
            print(f"launched in {time.perf_counter() - started:.1f} s", flush=True)
            at_launch = _tables()
            urls = list(_urls(launched).values())
            runs = RepoRun.objects.filter(campaign=launched)
            created = runs.count()
            last = started
            while True:
                time.sleep(0.5)
                now = time.perf_counter()
                if args.deadline_s and now - started >= args.deadline_s:
                    cut_short = True
                    break
                if now - last < args.sample_s:
                    if not runs.filter(state__in=ACTIVE).exists():  # on (campaign, state)
                        break
                    continue
                last = now
                done = runs.filter(state__in=FINAL).count()
                samples.append(_sample(now - started, done, worker, web, urls))
                print(
                    f"  {now - started:6.0f} s: {done:,} runs final, worker RSS "
                    f"{samples[-1][2]:.0f} MiB, web RSS {samples[-1][3]:.0f} MiB, "
                    f"dashboard {samples[-1][4]:.0f} ms, queue {samples[-1][5]:.0f} ms over HTTP, "
                    f"audit lag {(sealer.lags or [0.0])[-1]:.1f} s",
                    flush=True,
                )
                if done >= created:
                    break
            elapsed = time.perf_counter() - started
            finished = runs.filter(state__in=["succeeded", "failed"]).count()
            at_end = _tables()  # before a cancel writes its own rows
            samples.append(_sample(elapsed, finished, worker, web, urls))
            pg_cpu = _server_cpu_s() - pg_before  # the sealer's and this script's queries too
            worker_cpu, _ = cpu_s(worker.pid)
            if cut_short:
                print(f"deadline: {args.deadline_s:.0f} s reached; cancelling the rest", flush=True)
                campaign_cancel(campaign=launched, actor=manager)
                wait_until = time.monotonic() + 120
                while runs.filter(state__in=ACTIVE).exists() and time.monotonic() < wait_until:
                    time.sleep(0.5)
        except BaseException:
            web.stop()
            raise
        finally:
            worker_stop(worker)
            sealer.stop.set()
            if sealer.is_alive():
                sealer.join()
        failed = runs.filter(state="failed").count()
        fig.update(
            runs_created=created,
            runs_finished=finished,
            runs_failed=failed,
            cut_short=cut_short,
            elapsed_s=round(elapsed, 1),
            runs_per_s=round(finished / elapsed, 2),
        )
        what = f"{finished:,} of {created:,} runs" if cut_short else f"{finished:,} runs"
        print(f"runs: {what} in {elapsed:.1f} s = {finished / elapsed:.1f} runs/s; failed {failed}")
        walls = [
            (r.finished_at - r.started_at).total_seconds() * 1000
            for r in runs.filter(state__in=["succeeded", "failed"]).only(
                "started_at", "finished_at"
            )
            if r.finished_at and r.started_at
        ]
        fig.update(
            run_wall_p50_ms=round(_pct(walls, 50)),
            run_wall_p95_ms=round(_pct(walls, 95)),
            worker_cpu_ms_per_run=round(worker_cpu / max(finished, 1) * 1000, 1),
            postgres_cpu_ms_per_run=round(pg_cpu / max(finished, 1) * 1000, 1),
        )
        print(
            f"run wall (claim to final): p50 {fig['run_wall_p50_ms']} ms, "
            f"p95 {fig['run_wall_p95_ms']} ms; CPU per run: worker "
            f"{fig['worker_cpu_ms_per_run']} ms, PostgreSQL {fig['postgres_cpu_ms_per_run']} ms"
        )
        if failed:
            print(f"  first failure: {runs.filter(state='failed').first().error[:300]}")
        if len(samples) >= 3:
            (t0, d0, *_), (t1, d1, *_) = samples[0], samples[1]
            (ta, da, *_), (tb, db, *_) = samples[-3], samples[-2]
            first, last_w = (d1 - d0) / (t1 - t0), (db - da) / (tb - ta)
            fig.update(
                first_window_runs_per_s=round(first, 2), last_window_runs_per_s=round(last_w, 2)
            )
            print(
                f"throughput: first window {first:.1f} runs/s, last window {last_w:.1f} runs/s "
                f"(ratio last/first {last_w / max(first, 1e-9):.2f}x)"
            )
        fig["samples"] = [
            dict(
                zip(
                    (
                        "t_s",
                        "runs_final",
                        "worker_rss_mib",
                        "web_rss_mib",
                        "dashboard_http_ms",
                        "queue_http_ms",
                    ),
                    (round(v, 1) for v in s),
                    strict=True,
                )
            )
            for s in samples
        ]
        for who, col in (("worker", 2), ("web", 3)):
            rss = [s[col] for s in samples]
            fig[f"{who}_rss_first_mib"], fig[f"{who}_rss_last_mib"] = round(rss[0]), round(rss[-1])
            fig[f"{who}_rss_max_mib"] = round(max(rss))
            print(
                f"{who} RSS (largest process): first sample {rss[0]:.0f} MiB, max {max(rss):.0f} "
                f"MiB, last {rss[-1]:.0f} MiB; growth {rss[-1] - rss[0]:+.0f} MiB (target <= 50)"
            )
        if sealer.lags:
            fig.update(
                sealing_lag_p50_s=round(_pct(sealer.lags, 50), 1),
                sealing_lag_p95_s=round(_pct(sealer.lags, 95), 1),
                sealing_lag_max_s=round(max(sealer.lags), 1),
            )
            print(
                f"audit sealing lag (oldest unsealed event, sampled each second): "
                f"p50 {fig['sealing_lag_p50_s']} s, p95 {fig['sealing_lag_p95_s']} s, "
                f"max {fig['sealing_lag_max_s']} s"
            )
        per_run = _per_run(at_launch, at_end, created, finished)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            db_size = cursor.fetchone()[0]
        fig.update(
            rows_per_run=round(sum(t[1] for t in per_run), 2),
            kib_per_run=round(sum(t[2] for t in per_run) / 1024, 2),
            database_mib=round(db_size / 2**20),
            tables={name: [round(rows, 2), round(size)] for name, rows, size in per_run},
        )
        print(
            f"stored: {fig['rows_per_run']:.1f} rows and {fig['kib_per_run']:.1f} KiB per run "
            f"(tables with indexes; target <= 29.0 rows); database size {fig['database_mib']} MiB"
            + (" (with the cancelled runs' rows)" if cut_short else "")
        )
        for name, rows, size in per_run[:12]:
            print(f"  {name:<34} {rows:7.2f} rows/run {size:9.0f} B/run")
        campaign = Campaign.objects.get(pk=campaign.pk)
        fig["pages"] = _pages(campaign, reviewer, args.requests, web)
        for page, p in fig["pages"].items():
            verdict = "meets" if max(p["p95_ms"], p["http_p95_ms"]) <= 150 else "MISSES"
            print(
                f"{page} at {finished:,} runs ({created:,} in the campaign): in process p50 "
                f"{p['p50_ms']:.1f} ms, p95 {p['p95_ms']:.1f} ms; over HTTP p50 "
                f"{p['http_p50_ms']:.1f} ms, p95 {p['http_p95_ms']:.1f} ms ({verdict} the 150 ms "
                f"target)"
            )
        web_rss_end = web.rss_mb()
        web.stop()
        print(f"web RSS after the page timings: {web_rss_end:.0f} MiB")
        fig["web_rss_after_pages_mib"] = round(web_rss_end)
        tail = audit_seal(wait=True)  # what beat's next pass would link: the whole trail
        print(f"final seal: {tail.linked:,} events linked, {tail.checkpoints} checkpoints signed")
        jobs = min(4, os.cpu_count() or 1)  # audit_verify's own default for --jobs
        for n in dict.fromkeys((1, jobs)):
            started = time.perf_counter()
            report = audit_verify(jobs=n)
            took = time.perf_counter() - started
            fig[f"audit_verify_jobs{n}_events_per_s"] = round(report.checked / took)
            print(
                f"audit_verify --jobs {n}: {report.checked:,} events in {took:.1f} s = "
                f"{report.checked / took:,.0f} events/s (target >= 100,000); ok={report.ok}"
            )
        fig["audit_events"] = report.checked
        fig["load_average"] = os.getloadavg()
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        if args.out:
            args.out.write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
