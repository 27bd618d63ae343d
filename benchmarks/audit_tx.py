"""Transactions per second of a representative audited service call (token_create: one business
row plus its audit event, one transaction) with auditing on, against the same call with
auditing switched off, measured in the same run (target: audited >= 0.5x unaudited).

    .venv/bin/python benchmarks/audit_tx.py [--threads 16] [--seconds 4]

The sealer runs beside the writers the whole time, as the periodic task does in production.
Uses a scratch PostgreSQL database (BENCH_DATABASE_URL's server) that it drops at the end.
"""

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def scratch_database(name: str) -> str:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{SERVER.rsplit('/', 1)[0]}/{name}"


def scratch_drop(name: str) -> None:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(*, threads: int, seconds: float, audited: bool) -> float:
    from django.contrib.auth.models import User
    from django.db import connection

    import accounts.services
    from audit.services import audit_record, audit_seal

    user = User.objects.get(username="bench")
    accounts.services.audit_record = audit_record if audited else (lambda **kwargs: None)
    stop = threading.Event()
    counts = [0] * threads

    def writer(i: int) -> None:
        try:
            while not stop.is_set():
                accounts.services.token_create(user=user, name=f"bench-{i}")
                counts[i] += 1
        finally:
            connection.close()

    def sealer() -> None:
        try:
            while not stop.is_set():
                if audit_seal(wait=False).linked == 0:
                    stop.wait(0.2)
        finally:
            connection.close()

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    if audited:
        workers.append(threading.Thread(target=sealer))
    started = time.perf_counter()
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    rate = sum(counts) / (time.perf_counter() - started)
    accounts.services.audit_record = audit_record
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    name = f"convoy_bench_audit_tx_{os.getpid()}"
    url = scratch_database(name)
    os.environ.update(
        DATABASE_URL=url,
        CONVOY_DATA_DIR=tempfile.mkdtemp(prefix="convoy-bench-"),
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    try:
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection

        from audit.models import AuditEvent
        from audit.services import audit_seal, audit_verify

        call_command("migrate", "accounts", verbosity=0)
        call_command("migrate", "audit", verbosity=0)
        User.objects.create_user(username="bench")
        run(threads=args.threads, seconds=1, audited=True)  # warm up connections and caches
        plain, audited = [], []
        for _ in range(2):  # alternate, so drift affects both alike
            plain.append(run(threads=args.threads, seconds=args.seconds, audited=False))
            audited.append(run(threads=args.threads, seconds=args.seconds, audited=True))
        while audit_seal().linked:
            pass
        report = audit_verify()
        p, a = sum(plain) / len(plain), sum(audited) / len(audited)
        print(f"token_create, {args.threads} threads, {args.seconds:.0f} s x2 each:")
        print(f"  auditing off: {p:,.0f} tx/s   ({', '.join(f'{x:,.0f}' for x in plain)})")
        print(f"  auditing on:  {a:,.0f} tx/s   ({', '.join(f'{x:,.0f}' for x in audited)})")
        print(
            f"  ratio {a / p:.2f}x (target >= 0.5x: {'met' if a / p >= 0.5 else 'NOT met'}); "
            f"{AuditEvent.objects.count():,} events sealed, verify ok={report.ok}"
        )
        connection.close()
    finally:
        scratch_drop(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
