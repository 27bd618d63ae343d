"""Transactions per second of a representative audited service call (token_create: one business
row plus its audit event, one transaction) with auditing on, against the same call with
auditing switched off, measured in the same run (target: audited >= 0.5x unaudited).

    .venv/bin/python benchmarks/audit_tx.py [--processes 4] [--threads 4] [--seconds 4]

16 concurrent clients by default (4 processes x 4 threads, like web and worker processes).
The sealer runs as its own process the whole time, as the periodic task does in production.
Uses a scratch PostgreSQL database (BENCH_DATABASE_URL's server) that it drops at the end.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from scratch_db import scratch_django, scratch_drop  # noqa: E402


def writer_process(*, threads: int, seconds: float, audited: bool) -> None:
    """Child: set up, say "ready", wait for "go", run token_create for `seconds`, print count."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection

    import accounts.services

    if not audited:
        accounts.services.audit_record = lambda **kwargs: None
    user = User.objects.get(username="bench")
    accounts.services.token_create(user=user, name="warm-up")
    connection.close()
    stop = threading.Event()
    counts = [0] * threads

    def writer(i: int) -> None:
        try:
            while not stop.is_set():
                accounts.services.token_create(user=user, name=f"bench-{i}")
                counts[i] += 1
        finally:
            connection.close()

    print("ready", flush=True)
    sys.stdin.readline()
    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    print(sum(counts), flush=True)


def sealer_process() -> None:
    import django

    django.setup()
    from audit.seal import audit_seal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        if audit_seal(wait=False).linked == 0:
            time.sleep(0.2)  # the periodic task ticks every second; this is busier than that


def run(*, processes: int, threads: int, seconds: float, audited: bool) -> float:
    argv = [sys.executable, __file__, "--child", "writer", "--threads", str(threads)]
    argv += ["--seconds", str(seconds)] + (["--audited"] if audited else [])
    children = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    sealer = subprocess.Popen([sys.executable, __file__, "--child", "sealer"]) if audited else None
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        total = sum(int(child.stdout.readline()) for child in children)
        elapsed = time.perf_counter() - started
    finally:
        for child in children:
            child.wait()
        if sealer is not None:
            sealer.terminate()
            sealer.wait()
    return total / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("writer", "sealer"), help=argparse.SUPPRESS)
    parser.add_argument("--audited", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "writer":
        writer_process(threads=args.threads, seconds=args.seconds, audited=args.audited)
        return 0
    if args.child == "sealer":
        sealer_process()
        return 0
    name = f"convoy_bench_audit_tx_{os.getpid()}"
    try:
        scratch_django(name)
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection

        from audit.models import AuditEvent
        from audit.seal import audit_seal
        from audit.verify import audit_verify

        call_command("migrate", "auth", verbosity=0)
        call_command("migrate", "accounts", verbosity=0)
        call_command("migrate", "audit", verbosity=0)
        User.objects.create_user(username="bench")
        connection.close()
        shape = dict(processes=args.processes, threads=args.threads, seconds=args.seconds)
        plain, audited = [], []
        for _ in range(args.rounds):  # alternate, so drift in machine load affects both alike
            plain.append(run(**shape, audited=False))
            audited.append(run(**shape, audited=True))
        while audit_seal().linked:
            pass
        report = audit_verify()
        p, a = statistics.median(plain), statistics.median(audited)
        clients = args.processes * args.threads
        print(
            f"token_create, {clients} clients ({args.processes} processes x {args.threads} "
            f"threads), {args.rounds} alternating rounds of {args.seconds:.0f} s, medians:"
        )
        print(f"  auditing off: {p:,.0f} tx/s   ({', '.join(f'{x:,.0f}' for x in plain)})")
        print(f"  auditing on:  {a:,.0f} tx/s   ({', '.join(f'{x:,.0f}' for x in audited)})")
        print(
            f"  ratio {a / p:.2f}x (target >= 0.5x: {'met' if a / p >= 0.5 else 'NOT met'}); "
            f"{AuditEvent.objects.count():,} events sealed, verify ok={report.ok}"
        )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine)")
        connection.close()
    finally:
        scratch_drop(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
