"""Sealer throughput: events linked into the hash chain per second (with checkpoints signed
every CONVOY_AUDIT_CHECKPOINT_EVERY links), against the baseline of writing the same events
with audit_record from 16 threads in the same run: the sealer must outrun the writers.

    .venv/bin/python benchmarks/audit_sealer.py [--events 200000]

Uses a scratch PostgreSQL database (BENCH_DATABASE_URL's server) that it drops at the end.
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from scratch_db import scratch_django, scratch_drop  # noqa: E402


def write_rate(*, threads: int, seconds: float) -> float:
    """audit_record calls per second (one event per transaction) from `threads` writers."""
    from django.db import connection

    from audit.record import audit_record

    stop = threading.Event()
    counts = [0] * threads

    def writer(i: int) -> None:
        try:
            while not stop.is_set():
                audit_record(
                    action="sandbox.exec.started",
                    actor_type="agent",
                    on_behalf_of="mia",
                    payload={"argv": ["pytest", "-q"], "n": i},
                )
                counts[i] += 1
        finally:
            connection.close()

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - started)


def events_copy(n: int) -> None:
    """n realistic events in one COPY (all in one transaction, as a burst would be)."""
    import json
    import uuid

    from django.db import connection

    with (
        connection.cursor() as cursor,
        cursor.copy(
            "COPY audit_auditevent (event_id, occurred_at, action, outcome, actor_type, actor_id, "
            "actor_display, on_behalf_of, target_type, target_id, sandbox_id, body) FROM STDIN"
        ) as copy,
    ):
        for i in range(n):
            event_id = uuid.uuid4()
            body = json.dumps(
                {
                    "schema": "convoy.audit/1",
                    "event_id": str(event_id),
                    "occurred_at": "2026-11-26T03:00:00.000000Z",
                    "action": "sandbox.exec.completed",
                    "outcome": "success",
                    "actor": {
                        "type": "agent",
                        "id": "",
                        "display": "agent",
                        "ip": "",
                        "user_agent": "",
                        "on_behalf_of": "mia",
                    },
                    "target": {"type": "sandboxes.sandbox", "id": str(i % 97), "display": "sb"},
                    "context": {"campaign_id": 1, "sandbox_id": i % 97},
                    "reason": "",
                    "changes": {},
                    "payload": {
                        "argv": ["pytest", "-q"],
                        "exit_code": 0,
                        "duration_ms": i % 5000,
                        "stdout_sha256": "0" * 64,
                        "bytes": i,
                        "timed_out": False,
                    },
                },
                sort_keys=True,
                separators=(",", ":"),
            )
            copy.write_row(
                (
                    event_id,
                    "2026-11-26T03:00:00Z",
                    "sandbox.exec.completed",
                    "success",
                    "agent",
                    "",
                    "agent",
                    "mia",
                    "sandboxes.sandbox",
                    str(i % 97),
                    i % 97,
                    body,
                )
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    name = f"convoy_bench_audit_sealer_{os.getpid()}"
    try:
        scratch_django(name)
        from django.core.management import call_command
        from django.db import connection

        from audit.models import AuditEvent
        from audit.seal import audit_seal
        from audit.verify import audit_verify

        call_command("migrate", "auth", verbosity=0)
        call_command("migrate", "accounts", verbosity=0)
        call_command("migrate", "audit", verbosity=0)
        writes = write_rate(threads=16, seconds=4)
        # Link what the writers made first, so the timed run starts from a sealed head. Any
        # transaction open on the server (other databases too) holds the sealer back for a
        # moment, so seal until done and time only the calls that linked something.
        while audit_seal().size < AuditEvent.objects.count():
            time.sleep(0.05)
        events_copy(args.events)
        linked = made = 0
        elapsed = 0.0
        deadline = time.monotonic() + 300
        while linked < args.events and time.monotonic() < deadline:
            started = time.perf_counter()
            result = audit_seal()
            if result.linked:
                elapsed += time.perf_counter() - started
                linked, made = linked + result.linked, made + result.checkpoints
            else:
                time.sleep(0.05)
        assert linked == args.events, (linked, args.events)
        assert audit_verify().ok
        rate = linked / elapsed
        print(
            f"sealer: linked {linked:,} events and signed {made} "
            f"checkpoints in {elapsed:.2f} s = {rate:,.0f} events/s"
        )
        print(
            f"baseline, audit_record from 16 threads (one event per transaction): "
            f"{writes:,.0f} events/s; sealer/writers ratio {rate / writes:.1f}x"
        )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine)")
        connection.close()
    finally:
        scratch_drop(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
