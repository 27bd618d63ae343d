"""What the disk watch costs the worker in a large workspace, against the bare engine.

    .venv/bin/python benchmarks/disk_watch.py [--files 50000] [--seconds 10] [--short 20]
        [--backend bwrap]

One sandbox whose workspace holds `--files` small files (a large checkout), then in the same
run, each measured as the CPU seconds of the thread that pumps the command (the worker's):
  floor:       the bare engine (bwrap or runsc with Convoy's argv, started by Popen, its
               pipes read to the end): no watch at all;
  every tick:  Convoy's exec with a walk at every WATCH_EVERY_S and at each command's end,
               as it was before the walks had a share of the time (WALK_SHARE_MAX set to
               infinity for this row only);
  convoy:      Convoy's exec as it is.
For a `sleep --seconds` command, and for `--short` commands of `true` one after another.
Target: after a sandbox's first walk, the walks take at most WALK_SHARE_MAX (5%) of the time;
short commands pay no walk beyond the floor where the last one was recent.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
(ROOT / "var").mkdir(exist_ok=True)
DATA = Path(tempfile.mkdtemp(prefix="convoy-bench-watch-", dir=ROOT / "var"))
os.environ["CONVOY_DATA_DIR"] = str(DATA)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def _fill(root: Path, files: int) -> None:
    for d in range(-(-files // 100)):
        sub = root / f"d{d:04d}"
        sub.mkdir()
        for f in range(min(100, files - d * 100)):
            (sub / f"f{f:02d}.py").write_bytes(b"x = 1\n")


def _pumped_cpu(run) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) while `run()` runs."""
    cpu, wall = time.thread_time(), time.perf_counter()
    run()
    return time.thread_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--backend", default="bwrap", choices=["bwrap", "gvisor"])
    args = parser.parse_args()
    import django

    django.setup()
    from sandboxes.backends import local
    from sandboxes.backends.base import ExecResult, SandboxSpec
    from sandboxes.backends.bubblewrap import BubblewrapBackend
    from sandboxes.backends.gvisor import GVisorBackend

    engine = {"bwrap": BubblewrapBackend, "gvisor": GVisorBackend}[args.backend](DATA)
    handle = engine.create(SandboxSpec(timeout_s=3600, disk_mb=8192))
    try:
        workspace = engine.workspace_path(handle)
        _fill(workspace, args.files)
        walk_cpu, walk_wall = _pumped_cpu(lambda: local.disk_usage(workspace, stop_after=1 << 50))
        meta = engine.ws.meta_read(handle.external_id)

        def bare(argv: list[str]) -> None:
            proc, _ = engine._popen(meta, argv, "/workspace", dict(local.BASE_ENV))
            proc.communicate()
            assert proc.returncode == 0, proc.returncode

        def convoy(argv: list[str]) -> None:
            result = list(engine.exec(handle, argv, timeout_s=600))[-1]
            assert isinstance(result, ExecResult) and result.exit_code == 0, result

        long_cmd = ["sleep", str(args.seconds)]
        rows = []
        kept, walk = local.WALK_SHARE_MAX, local.workspace_usage
        walks = [0]

        def counted(*a, **kw):
            walks[0] += 1
            return walk(*a, **kw)

        local.workspace_usage = counted
        for name, run in (("floor", bare), ("every tick", convoy), ("convoy", convoy)):
            local.WALK_SHARE_MAX = float("inf") if name == "every tick" else kept
            engine._walks.clear()
            walks[0] = 0
            long_cpu, long_wall = _pumped_cpu(lambda run=run: run(long_cmd))
            long_walks, walks[0] = walks[0], 0
            short_cpu, _ = _pumped_cpu(lambda run=run: [run(["true"]) for _ in range(args.short)])
            rows.append((name, long_cpu, long_wall, short_cpu / args.short, long_walks, walks[0]))
        local.WALK_SHARE_MAX, local.workspace_usage = kept, walk
    finally:
        engine.terminate(handle)
        shutil.rmtree(DATA, ignore_errors=True)

    print(
        f"{args.backend}: a workspace of {args.files:,} files; one walk "
        f"{walk_cpu * 1000:.0f} ms of CPU ({walk_wall * 1000:.0f} ms wall); "
        f"WATCH_EVERY_S {local.WATCH_EVERY_S} s, WALK_SHARE_MAX {kept:.0%}"
    )
    print(
        f"{'':12s} {'sleep ' + str(args.seconds) + ' s: worker CPU':>30s} {'share':>7s}"
        f" {'walks':>6s} {'`true`: worker CPU a command':>30s} {'walks':>6s}"
    )
    floor_long, floor_short = rows[0][1], rows[0][3]
    for name, long_cpu, long_wall, short_each, long_walks, short_walks in rows:
        print(
            f"{name:12s} {long_cpu * 1000:27.0f} ms {long_cpu / long_wall:7.1%} {long_walks:6d}"
            f" {short_each * 1000:27.1f} ms {short_walks:6d}"
        )
    convoy_row, tick_row = rows[2], rows[1]
    after_first = (convoy_row[1] - floor_long - walk_cpu) / convoy_row[2]
    print(
        f"convoy above the floor: long command {(convoy_row[1] - floor_long) * 1000:.0f} ms "
        f"({(convoy_row[1] - floor_long) / convoy_row[2]:.1%} of its time, "
        f"{after_first:.1%} after the sandbox's first walk: target <= {kept:.0%}), "
        f"every tick {(tick_row[1] - floor_long) * 1000:.0f} ms; short command "
        f"{(convoy_row[3] - floor_short) * 1000:.1f} ms a command, every tick "
        f"{(tick_row[3] - floor_short) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    subprocess.run(["true"], check=True)  # fail early where nothing can be started
    main()
