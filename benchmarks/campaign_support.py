"""Shared set-up for the campaign benchmarks: a throwaway PostgreSQL database, Redis prefix and
data dir in the production shape, removed afterwards. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def bench_env(name: str) -> dict[str, str]:
    """Environment of a production-shape Convoy with its own database, Redis prefix, data dir."""
    tag = f"{name}_{os.getpid()}"
    base, _, _ = PG_URL.rpartition("/")
    return {
        "DATABASE_URL": f"{base}/convoy_bench_{tag}",
        "REDIS_URL": REDIS_URL,
        "CONVOY_REDIS_PREFIX": f"convoy-bench-{tag}",
        "CONVOY_DATA_DIR": str(ROOT / "var" / f"bench-{tag}"),
        "SECRET_KEY": secrets.token_urlsafe(40),
        "DEBUG": "0",
    }


def _admin_sql(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql)


@contextlib.contextmanager
def convoy(name: str, **extra: str):
    """Set up Django against a fresh database; yield the env (for workers); tear it all down."""
    env = {**bench_env(name), **extra}
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    dbname = env["DATABASE_URL"].rsplit("/", 1)[1]
    _admin_sql(f'CREATE DATABASE "{dbname}"')
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield {**os.environ}
    finally:
        from django.db import connections

        connections.close_all()
        _admin_sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        _redis_clear(env["CONVOY_REDIS_PREFIX"])
        shutil.rmtree(env["CONVOY_DATA_DIR"], ignore_errors=True)


def _redis_clear(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def worker_start(
    env: dict, *, concurrency: int, log: Path, pool: str = "threads"
) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool",
            pool,
            "-c",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    time.sleep(0)  # started; tasks wait on the broker until it is ready
    return proc


def worker_ready(proc: subprocess.Popen, *, timeout: float = 120) -> float:
    """Wait until the worker answers a ping over the broker (its pool is up); return the
    seconds waited. A fixed sleep was too short on a loaded machine, and the first runs'
    queue wait then measured the worker's start, not Convoy."""
    from config.celery import app

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}")
        if app.control.ping(timeout=0.5):
            return time.perf_counter() - started
    raise RuntimeError("the worker did not answer a ping")


def worker_stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tree(pid: int) -> list[int]:
    """The process and its live descendants (a prefork worker's pool processes)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of the process with its live descendants (a prefork worker's pool), and of
    the children they waited for (git, bwrap, runsc)."""
    tick = os.sysconf("SC_CLK_TCK")
    own = children = 0.0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own += (int(fields[11]) + int(fields[12])) / tick
        children += (int(fields[13]) + int(fields[14])) / tick
    return own, children


def machine_cpu_s() -> dict[str, float]:
    """CPU seconds of the whole machine so far, from the first line of /proc/stat: `busy`
    (every process and the kernel's own work: user, nice, system, irq, softirq) and `steal`
    (time the hypervisor gave the machine's CPUs to others). Per-process figures miss the
    kernel work done outside a process (namespace and mount teardown in kernel threads,
    interrupts), which bwrap's starts and ends cause a lot of."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


def machine_cpu_since(before: dict[str, float]) -> dict[str, float]:
    return {key: value - before[key] for key, value in machine_cpu_s().items()}


def postgres_cpu_s() -> float:
    """CPU seconds of every PostgreSQL process so far, with its exited backends (reaped by
    the postmaster, so counted in its children's time)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = stat.read_text().split(" (", 1)[1].split(")", 1)
        except (OSError, IndexError):
            continue
        if name.startswith("postgres"):
            f = fields.split()
            total += sum(int(x) for x in f[11:15]) / tick
    return total


def rss_mb(pid: int) -> float:
    """Peak resident set of the largest process of the worker (the parent or one pool process)."""
    peak = 0.0
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


if __name__ == "__main__":
    print("campaign_support: helpers for campaign_launch.py and campaign_sed.py (no figures)")


def host_tuning() -> str:
    """What `make host-tune` changes, as this host has it (the figures depend on it)."""
    try:
        expedited = Path("/sys/kernel/rcu_expedited").read_text().strip()
    except OSError:
        expedited = "unknown"
    hint = "" if expedited == "1" else " (make host-tune sets 1)"
    return f"host: rcu_expedited {expedited}{hint}"
