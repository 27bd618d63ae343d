"""Cached image start: a sandbox on a campaign image (create + first exec of `true`) against
today's host-/usr sandbox, measured in the same run, per local backend. Target: ratio ≤ 1.1.

    .venv/bin/python benchmarks/image_start.py [--runs 40] [--backends bwrap,gvisor]
                                               [--data-dir DIR]

The image (`apt: [python3-venv], pip: [pytest]`) is built once into DIR (a temporary directory
unless given; pass one to reuse a build across runs: the first build takes about a minute and
reaches the host's apt and pip sources). A sandbox on the image also gets the tools area
(/convoy/home), as every campaign on an image does. Runs alternate host and image so load
drift hits both alike; terminating is not timed, but every sandbox is terminated.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

SPEC = {"apt": ["python3-venv"], "pip": ["pytest"]}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def image_ready() -> tuple[str, Path, dict]:
    """The image's key, rootfs and env: built now unless the data dir already holds it."""
    from sandboxes.images.build import (
        BuildLog,
        image_dir,
        image_log_path,
        manifest_read,
        rootfs_build,
    )
    from sandboxes.images.services import image_resolve
    from sandboxes.images.spec import image_spec_parse

    spec = image_spec_parse(SPEC)
    key, resolved = image_resolve(spec=spec)
    if manifest_read(key) is None:
        started = time.monotonic()
        log = BuildLog(image_log_path(key), None)
        try:
            rootfs_build(spec=spec, key=key, resolved_base=resolved, log=log)
        finally:
            log.close()
        print(f"built image {key[:12]} in {time.monotonic() - started:.1f} s")
    manifest = json.loads((image_dir(key) / "manifest.json").read_text())
    return key, image_dir(key) / "rootfs", manifest["env"]


def start(backend, spec) -> float:
    started = time.perf_counter()
    handle = backend.create(spec)
    try:
        events = list(backend.exec(handle, ["true"]))
        elapsed = time.perf_counter() - started
        assert events[-1].exit_code == 0, events
    finally:
        backend.terminate(handle)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--backends", default="bwrap,gvisor")
    parser.add_argument("--data-dir", default="")
    args = parser.parse_args()
    data = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="convoy-bench-"))
    data.mkdir(parents=True, exist_ok=True)
    os.environ["CONVOY_DATA_DIR"] = str(data)
    import django

    django.setup()
    from sandboxes.backends import BACKENDS
    from sandboxes.backends.base import SandboxSpec

    try:
        key, rootfs, env = image_ready()
        host = SandboxSpec(timeout_s=600)
        on_image = SandboxSpec(
            timeout_s=600, image_root=str(rootfs), image_key=key, image_env=env, tools_home=True
        )
        print(f"image {key[:12]}; {args.runs} starts each, alternating; create + exec(true)")
        for name in args.backends.split(","):
            from django.utils.module_loading import import_string

            backend = import_string(BACKENDS[name])(data)
            start(backend, host), start(backend, on_image)  # warm caches and spares
            times: dict[str, list[float]] = {"host": [], "image": []}
            for _ in range(args.runs):
                times["host"].append(start(backend, host))
                times["image"].append(start(backend, on_image))
            p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
            p95 = {k: pct(v, 95) * 1000 for k, v in times.items()}
            print(
                f"{name:7} host /usr: p50 {p50['host']:6.1f} ms  p95 {p95['host']:6.1f} ms | "
                f"image: p50 {p50['image']:6.1f} ms  p95 {p95['image']:6.1f} ms | "
                f"ratio p50 {p50['image'] / p50['host']:.2f}x"
            )
            if hasattr(backend, "wait_deletes"):
                backend.wait_deletes()
    finally:
        if not args.data_dir:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
