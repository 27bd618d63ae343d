"""Sandbox start: create + first exec of `true`, p50/p95 over N runs per local backend.

    .venv/bin/python benchmarks/sandbox_start.py [--runs 50] [--backends gvisor,bwrap]

The baseline, measured in the same run, is the bare engine running `true` with the same
isolation flags and nothing of Convoy's around it: `bwrap --unshare-all … true` for bubblewrap,
and `runsc run` of a bundle whose process is `true` (then `runsc delete`) for gVisor. Convoy's
figure is the backend's `create()` plus its first `exec(["true"])` (workspace, cgroups, the
container, the exec). Target: ratio ≤ 1.3. Terminating is not timed (it is not on the path to
the first result), but every sandbox is terminated.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def bare_bwrap(backend) -> float:
    from sandboxes.backends.bubblewrap import bwrap_argv

    workspace = tempfile.mkdtemp(dir=backend.data_dir)
    argv = bwrap_argv(etc=str(backend.ws.etc()), workspace=workspace, network="none", cwd="/")
    start = time.perf_counter()
    subprocess.run([*argv, "true"], check=True, env={"PATH": "/usr/bin:/bin"})
    elapsed = time.perf_counter() - start
    shutil.rmtree(workspace)
    return elapsed


def bare_runsc(backend, bundle: Path, n: int) -> float:
    runsc = [
        "runsc",
        f"--root={backend.data_dir / 'bare-runsc'}",
        f"--platform={backend.platform}",
        "--network=none",
    ]
    cid = f"bare-{os.getpid()}-{n}"
    start = time.perf_counter()
    subprocess.run([*runsc, "run", f"--bundle={bundle}", cid], check=True)
    elapsed = time.perf_counter() - start
    subprocess.run([*runsc, "delete", "-force", cid], check=False, capture_output=True)
    return elapsed


def runsc_bundle(backend) -> Path:
    """The bundle a Convoy gVisor sandbox uses, with `true` as its process."""
    from sandboxes.backends.base import SandboxSpec

    handle = backend.create(SandboxSpec(timeout_s=600))
    list(backend.exec(handle, ["true"]))  # the container (and its bundle) starts at a command
    config = json.loads((backend.ws.dir(handle.external_id) / "bundle" / "config.json").read_text())
    backend.terminate(handle)
    config["process"]["args"] = ["true"]
    workspace = Path(tempfile.mkdtemp(dir=backend.data_dir))
    for mount in config["mounts"]:
        if mount["destination"] == "/workspace":
            mount["source"] = str(workspace)
    bundle = Path(tempfile.mkdtemp(dir=backend.data_dir))
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def convoy(backend) -> tuple[float, float]:
    """Create + first exec of `true`; and, for the breakdown, a second exec on the same one."""
    from sandboxes.backends.base import SandboxSpec

    start = time.perf_counter()
    handle = backend.create(SandboxSpec(timeout_s=600))
    events = list(backend.exec(handle, ["true"]))
    elapsed = time.perf_counter() - start
    assert events[-1].exit_code == 0, events
    start = time.perf_counter()
    list(backend.exec(handle, ["true"]))
    again = time.perf_counter() - start
    backend.terminate(handle)
    return elapsed, again


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--backends", default="gvisor,bwrap")
    args = parser.parse_args()
    import django

    django.setup()
    from sandboxes.backends.bubblewrap import BubblewrapBackend
    from sandboxes.backends.gvisor import GVisorBackend

    data = Path(tempfile.mkdtemp(prefix="convoy-bench-", dir=ROOT / "var"))
    from campaign_support import host_tuning

    from sandboxes.backends.cgroups import launch_mode

    print(f"sandbox start: create + first exec of `true`, {args.runs} runs each (interleaved)")
    print(launch_mode())
    print(host_tuning())
    header = ("backend", "convoy p50", "p95", "bare p50", "p95", "ratio p50", "p95")
    print("{:8} {:>11} {:>8} {:>9} {:>8} {:>10} {:>6}".format(*header))
    try:
        for name in args.backends.split(","):
            (data / name).mkdir()
            backend = {"gvisor": GVisorBackend, "bwrap": BubblewrapBackend}[name](data / name)
            bundle = runsc_bundle(backend) if name == "gvisor" else None
            ours, bare, again = [], [], []
            for i in range(args.runs + 3):  # three warm-up rounds, not counted
                b = bare_runsc(backend, bundle, i) if bundle else bare_bwrap(backend)
                c, a = convoy(backend)
                if i >= 3:
                    bare.append(b)
                    ours.append(c)
                    again.append(a)
            p50, p95 = statistics.median(ours), pct(ours, 95)
            b50, b95 = statistics.median(bare), pct(bare, 95)
            print(
                f"{name:8} {p50 * 1e3:9.1f}ms {p95 * 1e3:6.1f}ms {b50 * 1e3:7.1f}ms "
                f"{b95 * 1e3:6.1f}ms {p50 / b50:9.2f}x {p95 / b95:5.2f}x"
            )
            a50 = statistics.median(again)
            print(f"{'':8} later exec of `true` in a running sandbox: p50 {a50 * 1e3:.1f}ms")
            if hasattr(backend, "sweep"):
                backend.sweep(set(), grace_s=0)
            if hasattr(backend, "wait_deletes"):  # no `runsc delete` left running into the next
                backend.wait_deletes()
    finally:
        for mount in Path("/proc/mounts").read_text().splitlines():
            if str(data) in mount:
                subprocess.run(["umount", "-l", mount.split()[1]], check=False)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
