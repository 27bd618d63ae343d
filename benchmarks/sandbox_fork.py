"""Snapshot + fork 4 of a 5,000-file, 100 MB workspace vs 4 fresh clones; gVisor checkpoints.

    .venv/bin/python benchmarks/sandbox_fork.py [--files 5000] [--mb 100] [--backend bwrap]

Builds a repository of `--files` files totalling `--mb` MB, mirrors it the way campaigns do
(`sandboxes.repos.mirror_fetch`) and checks it out into one sandbox. Then, in the same run:
  baseline: 4 fresh clones of the commit from the mirror (`repos.clone_at`, what giving each
            variant its own checkout would cost);
  convoy:   `snapshot()` of the checked-out sandbox + `fork(…, 4)` (overlay layers).
Target: convoy / baseline ≤ 0.05. Each fork's files are checked to be the snapshot's.
Then gVisor's memory checkpoint and three restores of a sandbox running a process.
"""

import argparse
import base64
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(tempfile.mkdtemp(prefix="convoy-bench-fork-", dir=ROOT / "var"))
os.environ["CONVOY_DATA_DIR"] = str(DATA)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def make_repo(path: Path, files: int, mb: int) -> None:
    rng = random.Random(7)
    per_file = mb * 1024 * 1024 // files
    for i in range(files):
        d = path / f"pkg{i % 50:02d}" / f"mod{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        raw = rng.randbytes(per_file * 3 // 4)
        (d / f"file{i:05d}.txt").write_bytes(base64.encodebytes(raw))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env)


def checkout_into(engine, handle, mirror: Path, sha: str) -> None:
    """As campaigns check out (`repos.sandbox_repo_checkout`): cloned as the worker beside the
    workspaces, given to the sandbox's host user, then moved in. Host git refuses a directory
    another user owns ("dubious ownership"), and a root worker's workspaces are its sandboxes'
    host users' (`sandboxes/backends/host_user.py`)."""
    from sandboxes.backends.host_user import tree_chown
    from sandboxes.repos import clone_at

    staged = Path(tempfile.mkdtemp(prefix=".bench-", dir=engine.ws.root))
    clone_at(mirror=mirror, sha=sha, dest=staged)
    owner = engine.workspace_owner(handle)
    if owner is not None:
        tree_chown(staged, owner)
    workspace = engine.workspace_path(handle)
    for entry in os.listdir(staged):
        os.rename(staged / entry, workspace / entry)
    staged.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--backend", default="bwrap")
    args = parser.parse_args()
    import django

    django.setup()
    from django.conf import settings

    from sandboxes.backends.base import SandboxSpec
    from sandboxes.backends.bubblewrap import BubblewrapBackend
    from sandboxes.backends.gvisor import GVisorBackend
    from sandboxes.repos import clone_at, commit_resolve, mirror_fetch

    backends = {"bwrap": BubblewrapBackend, "gvisor": GVisorBackend}
    engine = backends[args.backend](DATA)
    try:
        origin = Path(settings.REPO_ROOTS[0]) / "bench"
        origin.mkdir(parents=True)
        t = time.perf_counter()
        make_repo(origin, args.files, args.mb)
        mirror = mirror_fetch(url=f"file://{origin}")
        sha = commit_resolve(mirror=mirror, ref="main")
        built = time.perf_counter() - t
        print(f"repository: {args.files} files, {args.mb} MB (built in {built:.1f}s)")

        clones = Path(tempfile.mkdtemp(dir=DATA))
        t = time.perf_counter()
        for i in range(4):
            clone_at(mirror=mirror, sha=sha, dest=clones / f"c{i}")
        baseline = time.perf_counter() - t
        shutil.rmtree(clones)

        spec = SandboxSpec(timeout_s=3600)
        engine.ws.overlay_available()  # probed once per installation, not per snapshot
        source = engine.create(spec)
        checkout_into(engine, source, mirror, sha)
        t = time.perf_counter()
        snapshot = engine.snapshot(source)
        snap_s = time.perf_counter() - t
        forks = engine.fork(snapshot, spec, 4)
        ours = time.perf_counter() - t
        probe = "pkg03/mod3/file00003.txt"
        expected = (origin / probe).read_bytes()
        assert all(engine.read_file(f, probe) == expected for f in forks)
        # A run's forks run as its source sandbox's host user (none where the worker is not root).
        assert {engine.workspace_owner(f) for f in forks} == {engine.workspace_owner(source)}
        overlay = "overlay" if engine.ws.overlay_available() else "copy (overlay refused)"
        print(f"4 fresh clones from the mirror (baseline): {baseline:8.3f}s")
        print(f"snapshot + fork 4 on {args.backend} ({overlay}):   {ours:8.3f}s")
        print(f"  of which snapshot {snap_s * 1e3:.1f} ms, 4 forks {(ours - snap_s) * 1e3:.1f} ms")
        print(f"ratio: {ours / baseline:.4f}x (target <= 0.05)")
        for handle in [*forks, source]:
            engine.terminate(handle)

        gv = GVisorBackend(DATA)
        box = gv.create(SandboxSpec(timeout_s=600, memory_mb=256))
        loop = "i=0; while :; do i=$((i+1)); echo $i > /tmp/m; mv /tmp/m /tmp/n; sleep 0.05; done"
        list(gv.exec(box, ["sh", "-c", f"({loop}) >/dev/null 2>&1 &"]))
        t = time.perf_counter()
        checkpoint = gv.checkpoint(box)
        ck = time.perf_counter() - t
        restores = []
        for _ in range(3):
            t = time.perf_counter()
            restored = gv.restore(checkpoint, SandboxSpec(timeout_s=600))
            restores.append(time.perf_counter() - t)
            out = b"".join(e.data for e in list(gv.exec(restored, ["cat", "/tmp/n"]))[:-1])
            assert int(out) > 0
            gv.terminate(restored)
        print(f"gVisor checkpoint: runsc checkpoint {gv.last_checkpoint_s * 1e3:.0f} ms;")
        print(f"  with freezing the files (no restart: lazy start) {ck * 1e3:.0f} ms")
        print(
            "gVisor restore into a fresh sandbox: "
            + ", ".join(f"{r * 1e3:.0f} ms" for r in restores)
        )
        gv.terminate(box)
        gv.delete_checkpoint(checkpoint)
    finally:
        for e in (engine, GVisorBackend(DATA)):
            for handle in e.list({}):
                e.terminate(handle)
            e.sweep(set(), grace_s=0)
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
