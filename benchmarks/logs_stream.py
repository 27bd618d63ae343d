"""Live logs, production shape: lines/s stored and delivered, write→client latency, 50 watchers.

    .venv/bin/python benchmarks/logs_stream.py [--lines 200000]

Three processes, as in production: `manage.py serve` (daphne, the websocket consumers), a
producer process that runs commands in a bubblewrap sandbox through `sandbox_exec` (as a Celery
worker does), and this process, the websocket clients. The baseline, measured in the same run,
is a bare channels_redis `group_send` → `receive` loop with one message per line (the standard
layer, capacity raised so that it drops nothing; the pub/sub layer Convoy uses is shown too).
Every run checks that each client got every line exactly once, in order.

Needs PostgreSQL (BENCH_DATABASE_URL's server, default the local one) and Redis (BENCH_REDIS_URL,
default the local one); builds a scratch database and drops it at the end.
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from scratch_db import scratch_database, scratch_drop  # noqa: E402

sys.path.insert(0, str(ROOT))
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SEQ = re.compile(rb'log-(\w+)" data-seq="(\d+)"[^>]*>([^<]*)</div>')
PACED = """
import sys, time
rate, seconds = {rate}, {seconds}
start = time.monotonic()
written, total = 0, int(rate * seconds)
while written < total:
    due = min(total, int((time.monotonic() - start) * rate) + 1)
    while written < due:
        sys.stdout.write(f"{{time.time_ns()}} {{written}}\\n")
        written += 1
    sys.stdout.flush()
    time.sleep(0.0005)
"""

# --- the producer process (a worker) ----------------------------------------------------------


def produce(sandbox_id: int, script: str) -> None:
    import django

    django.setup()
    from sandboxes.models import Sandbox
    from sandboxes.services import sandbox_exec

    sandbox = Sandbox.objects.get(pk=sandbox_id)
    started = time.time()
    command = sandbox_exec(sandbox=sandbox, argv=["sh", "-c", script], timeout_s=600)
    finished = time.time()
    sandbox.refresh_from_db()
    print(
        json.dumps(
            {
                "started": started,
                "stored": finished,
                "exit_code": command.exit_code,
                "last_seq": sandbox.last_log_seq,
            }
        ),
        flush=True,
    )


# --- the clients (this process) -----------------------------------------------------------------


class Client:
    """One websocket reader that records each line's seq and text as it arrives."""

    def __init__(self, url: str, cookie: str, origin: str) -> None:
        self.url, self.cookie, self.origin = url, cookie, origin
        self.seqs: list[int] = []
        self.texts: list[bytes] = []
        self.arrivals: list[float] = []  # receive time of each line (wall clock)
        self.done = asyncio.Event()
        self.expect = None

    async def run(self, ready: asyncio.Event, keep_text: bool) -> None:
        import websockets

        async with websockets.connect(
            self.url,
            origin=self.origin,
            additional_headers={"Cookie": f"sessionid={self.cookie}"},
            max_size=None,
        ) as ws:
            ready.set()
            async for message in ws:
                now = time.time()
                found = SEQ.findall(message.encode())
                self.seqs.extend(int(s) for _, s, _ in found)
                if keep_text:
                    # The command's output only, not our own `$ argv` header lines.
                    output = [t for stream, _, t in found if stream != b"system"]
                    self.texts.extend(output)
                    self.arrivals.extend([now] * len(output))
                self.last_at = now
                self.finish_if_complete()

    def finish_if_complete(self) -> None:
        if self.expect is not None and self.seqs and self.seqs[-1] >= self.expect:
            self.done.set()

    def check(self, first: int, last: int) -> bool:
        return self.seqs == list(range(first, last + 1))


def run_producer(env: dict, sandbox_id: int, script: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "produce", str(sandbox_id), script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


async def watch(base, cookie, sandbox_id, after, env, script, *, clients=1, keep_text=False):
    """Connect the clients, run the command, wait until every client has the last line."""
    url = base.replace("http://", "ws://") + f"/ws/sandboxes/{sandbox_id}/logs/?after={after}"
    readers = [Client(url, cookie, base) for _ in range(clients)]
    readies = [asyncio.Event() for _ in readers]
    tasks = [
        asyncio.create_task(r.run(e, keep_text)) for r, e in zip(readers, readies, strict=True)
    ]
    await asyncio.gather(*(e.wait() for e in readies))
    proc = await asyncio.to_thread(run_producer, env, sandbox_id, script)
    out, _ = await asyncio.to_thread(proc.communicate)
    result = json.loads(out.strip().splitlines()[-1])
    for reader in readers:
        reader.expect = result["last_seq"]
        reader.finish_if_complete()
    await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in readers)), timeout=600)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result, readers


# --- the baseline: one channels_redis message per line -----------------------------------------


async def bare_layer(layer_cls: str, messages: int, prefix: str) -> float:
    from importlib import import_module

    module, _, name = layer_cls.rpartition(".")
    config = {"hosts": [REDIS], "prefix": prefix}
    if name == "RedisChannelLayer":
        config["capacity"] = messages + 10
    layer = getattr(import_module(module), name)(**config)
    channel = await layer.new_channel()
    await layer.group_add("bench", channel)

    async def receive_all():
        for i in range(messages):
            message = await layer.receive(channel)
            assert message["n"] == i, "the bare layer lost or reordered a message"

    receiver = asyncio.create_task(receive_all())
    await asyncio.sleep(0.2)  # let the receiver subscribe before the first send
    started = time.perf_counter()
    for i in range(messages):
        await layer.group_send("bench", {"type": "log.line", "n": i, "text": f"line {i}"})
    await receiver
    elapsed = time.perf_counter() - started
    await layer.group_discard("bench", channel)
    await layer.flush()
    return messages / elapsed


# --- set-up ------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--baseline-messages", type=int, default=5_000)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=("throughput", "latency", "watchers"), default=None)
    args = parser.parse_args()

    db_name = f"convoy_bench_logs_{os.getpid()}"
    data_dir = tempfile.mkdtemp(prefix="convoy-bench-logs-")
    env = {
        **os.environ,
        "DATABASE_URL": scratch_database(db_name),
        "REDIS_URL": REDIS,
        "CONVOY_REDIS_PREFIX": f"convoy-bench-{os.getpid()}",
        "CONVOY_DATA_DIR": data_dir,
        "CONVOY_SANDBOX_BACKEND": "bwrap",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "bench-" + os.urandom(16).hex(),
        "DEBUG": "0",
    }
    env.pop("PYTEST_VERSION", None)
    os.environ.update(env)
    server = sandbox = None
    failures: list[str] = []
    try:
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client as HttpClient

        from sandboxes.backends.base import SandboxSpec
        from sandboxes.services import sandbox_create, sandbox_terminate

        call_command("migrate", verbosity=0)
        admin = User.objects.create_superuser("bench", password=os.urandom(16).hex())
        http = HttpClient()
        http.force_login(admin)
        cookie = http.cookies["sessionid"].value
        sandbox = sandbox_create(spec=SandboxSpec(timeout_s=3600), backend="bwrap")
        connection.close()

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/login/", timeout=2)  # noqa: S310 - our own server
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)

        after = 0

        def next_after(result):
            nonlocal after
            first = after + 1
            after = result["last_seq"]
            return first

        print(f"Live logs benchmark, production shape ({time.strftime('%Y-%m-%d %H:%M UTC')})")
        print(
            "processes: daphne web (consumers) | producer running sandbox_exec in bwrap | "
            "websocket clients"
        )

        def want(part):
            return args.only in (None, part)

        bare_std = None
        if want("throughput"):
            # 1. Throughput: one client, a command printing as fast as it can.
            result, (reader,) = asyncio.run(
                watch(base, cookie, sandbox.pk, after, env, f"seq 1 {args.lines}", keep_text=True)
            )
            first = next_after(result)
            exec_s = result["stored"] - result["started"]
            deliver_s = reader.last_at - result["started"]
            output = [t for t in reader.texts]
            complete = reader.check(first, result["last_seq"]) and output == [
                str(i).encode() for i in range(1, args.lines + 1)
            ]
            if not complete:
                failures.append("throughput run lost or reordered lines")
            stored_rate = args.lines / exec_s
            delivered_rate = args.lines / deliver_s

            # 2. Baselines in the same run.
            prefix = f"convoy-bench-{os.getpid()}-bare"
            bare_std = asyncio.run(
                bare_layer("channels_redis.core.RedisChannelLayer", args.baseline_messages, prefix)
            )
            bare_pubsub = asyncio.run(
                bare_layer(
                    "channels_redis.pubsub.RedisPubSubChannelLayer", args.baseline_messages, prefix
                )
            )
            bare_cmd = subprocess.run(
                ["bash", "-c", f"time (seq 1 {args.lines} > /dev/null)"],
                capture_output=True,
                text=True,
            ).stderr.strip()

            print()
            print(f"1. One client, `seq 1 {args.lines}` (as fast as it can print)")
            print(
                f"   stored:    {stored_rate:>10,.0f} lines/s  (sandbox_exec took {exec_s:.2f} s)"
            )
            print(
                f"   delivered: {delivered_rate:>10,.0f} lines/s  (last line at {deliver_s:.2f} s)"
            )
            print(f"   lines complete and in order: {'yes' if complete else 'NO'}")
            print(
                f"   baseline, bare channels_redis group_send→receive, one message per line "
                f"({args.baseline_messages:,} messages):"
            )
            print(f"     standard layer: {bare_std:>8,.0f} messages/s")
            print(f"     pub/sub layer:  {bare_pubsub:>8,.0f} messages/s")
            print(
                f"   ratio delivered / bare standard layer: {delivered_rate / bare_std:.1f}x; "
                f"/ bare pub/sub layer: {delivered_rate / bare_pubsub:.1f}x"
            )
            print(
                f"   target >= 50,000 lines/s: {'met' if delivered_rate >= 50_000 else 'NOT met'}"
            )

        if want("latency"):
            # 3. Latency at a paced rate.
            print()
            print("2. Latency from the command writing a line to the client receiving it")
            for rate in (1_000, 10_000):
                script = "python3 -c '{}'".format(
                    PACED.format(rate=rate, seconds=args.latency_seconds).replace("'", "'\\''")
                )
                result, (reader,) = asyncio.run(
                    watch(base, cookie, sandbox.pk, after, env, script, keep_text=True)
                )
                first = next_after(result)
                lat = [
                    (arrived - int(text.split(b" ")[0]) / 1e9) * 1000
                    for text, arrived in zip(reader.texts, reader.arrivals, strict=True)
                ]
                count = int(rate * args.latency_seconds)
                ok = reader.check(first, result["last_seq"]) and [
                    int(t.split(b" ")[1]) for t in reader.texts
                ] == list(range(count))
                if not ok:
                    failures.append(f"latency run at {rate}/s lost or reordered lines")
                p50, p99 = statistics.median(lat), pct(lat, 0.99)
                target = f"  (target p99 <= 100 ms: {'met' if p99 <= 100 else 'NOT met'})"
                print(
                    f"   {rate:>6,} lines/s for {args.latency_seconds:.0f} s: p50 {p50:6.1f} ms, "
                    f"p99 {p99:6.1f} ms, max {max(lat):6.1f} ms, complete and in order: "
                    f"{'yes' if ok else 'NO'}{target if rate == 1_000 else ''}"
                )

        if want("watchers"):
            # 4. Many watchers.
            lines = args.lines // 4
            result, readers = asyncio.run(
                watch(base, cookie, sandbox.pk, after, env, f"seq 1 {lines}", clients=args.watchers)
            )
            first = next_after(result)
            slowest = max(r.last_at for r in readers) - result["started"]
            ok = all(r.check(first, result["last_seq"]) for r in readers)
            if not ok:
                failures.append("a watcher lost or reordered lines")
            print()
            print(f"3. {args.watchers} clients watching one sandbox, `seq 1 {lines}`")
            print(
                f"   every client had every line after {slowest:.2f} s: "
                f"{lines / slowest:,.0f} lines/s per client, "
                f"{lines * args.watchers / slowest:,.0f} line deliveries/s in all; "
                f"complete and in order for all {args.watchers}: {'yes' if ok else 'NO'}"
            )
            if bare_std:
                print(
                    f"   ratio deliveries/s to a bare standard-layer group_send to one receiver: "
                    f"{lines * args.watchers / slowest / bare_std:.0f}x"
                )
        if want("throughput"):
            print()
            print(f"(printing `seq 1 {args.lines}` to /dev/null alone: {bare_cmd.split()[1]})")
        print("zero lines lost or reordered in every run:", "yes" if not failures else "NO")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if sandbox is not None:
            sandbox_terminate(sandbox=sandbox, reason="benchmark finished")
        from django.db import connections

        connections.close_all()
        scratch_drop(db_name)
        subprocess.run(["rm", "-rf", data_dir], check=False)
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "produce":
        produce(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
