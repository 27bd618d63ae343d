"""audit_verify speed over 1,000,000 sealed events (target >= 100,000 events/s), in one process
and with the command's default --jobs, against the baseline of merely reading the same rows
in the same run.

    .venv/bin/python benchmarks/audit_verify.py [--events N]

Builds a scratch PostgreSQL database (BENCH_DATABASE_URL's server, default the local one),
loads the events and their links with COPY, signs the checkpoints, and drops it at the end.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from scratch_db import scratch_database, scratch_drop  # noqa: E402


def body(n: int) -> str:
    """An exec.completed event of the usual size, in canonical form."""
    return json.dumps(
        {
            "schema": "convoy.audit/1",
            "event_id": str(uuid.UUID(int=n + 1)),
            "occurred_at": f"2026-11-26T03:{n // 60000 % 60:02d}:00.{n % 1000000:06d}Z",
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
            "target": {"type": "sandboxes.sandbox", "id": str(n % 977), "display": "sandbox"},
            "context": {"campaign_id": n % 13, "run_id": n % 401, "sandbox_id": n % 977},
            "reason": "",
            "changes": {},
            "payload": {
                "argv": ["pytest", "-q", f"tests/test_{n % 50}.py"],
                "cwd": "/workspace",
                "exit_code": n % 2,
                "duration_ms": n % 9000,
                "stdout_sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                "bytes": n % 65536,
                "timed_out": False,
            },
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def load(n: int) -> None:
    from django.db import connection

    from audit import chain

    contents = []
    with connection.cursor() as cursor:
        with cursor.copy(
            "COPY audit_auditevent (id, event_id, occurred_at, action, outcome, actor_type, "
            "actor_id, actor_display, on_behalf_of, target_type, target_id, campaign_id, run_id, "
            "sandbox_id, body) FROM STDIN"
        ) as copy:
            for i in range(n):
                text = body(i)
                contents.append(chain.content_hash(text.encode()))
                copy.write_row(
                    (
                        i + 1,
                        uuid.UUID(int=i + 1),
                        "2026-11-26T03:00:00Z",
                        "sandbox.exec.completed",
                        "success",
                        "agent",
                        "",
                        "agent",
                        "mia",
                        "sandboxes.sandbox",
                        str(i % 977),
                        i % 13,
                        i % 401,
                        i % 977,
                        text,
                    )
                )
        cursor.execute("SELECT setval('audit_auditevent_id_seq', %s)", [n])
        prev = chain.GENESIS
        with cursor.copy(
            "COPY audit_auditlink (seq, event_pk, event_uuid, content_hash, chain_hash) FROM STDIN"
        ) as copy:
            for i, content in enumerate(contents):
                prev = chain.chain_hash(prev, i + 1, content)
                copy.write_row((i + 1, i + 1, uuid.UUID(int=i + 1), content, prev))
        cursor.execute("VACUUM ANALYZE audit_auditevent")
        cursor.execute("VACUUM ANALYZE audit_auditlink")


def read_only_baseline() -> float:
    """The same walk without any checking: what reading the rows alone costs."""
    from django.db import transaction

    from audit.verify import _links_walk

    started = time.perf_counter()
    with transaction.atomic():
        count = sum(len(batch) for batch in _links_walk(0, keys=False))
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    name = f"convoy_bench_audit_verify_{os.getpid()}"
    url = scratch_database(name)
    data_dir = tempfile.mkdtemp(prefix="convoy-bench-")
    os.environ.update(
        DATABASE_URL=url, CONVOY_DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="config.settings"
    )
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        from audit.seal import audit_seal
        from audit.verify import audit_verify

        call_command("migrate", "accounts", verbosity=0)  # its post-migrate hook needs auth
        call_command("migrate", "audit", verbosity=0)
        t0 = time.perf_counter()
        load(args.events)
        made = audit_seal().checkpoints  # everything is linked: this only signs the checkpoints
        print(
            f"loaded {args.events:,} events with links and {made} checkpoints "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        baseline = read_only_baseline()
        jobs = min(4, os.cpu_count() or 1)  # what `manage.py audit_verify` uses by default
        rates = {}
        for n in (1, jobs):
            started = time.perf_counter()
            report = audit_verify(jobs=n)
            elapsed = time.perf_counter() - started
            assert report.ok and report.checked == args.events, report.as_dict()
            rates[n] = args.events / elapsed
            print(
                f"audit_verify --jobs {n}: {args.events:,} events, {report.checkpoints} "
                f"checkpoints in {elapsed:.2f} s = {rates[n]:,.0f} events/s"
            )
        best = max(rates.values())
        print(f"target 100,000 events/s: {'met' if best >= 100_000 else 'NOT met'}")
        print(
            f"baseline, reading the same rows in one process without checking: "
            f"{baseline:,.0f} events/s; ratio {rates[1] / baseline:.2f}x (1 job), "
            f"{rates[jobs] / baseline:.2f}x ({jobs} jobs)"
        )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine)")
        connection.close()
    finally:
        scratch_drop(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
