"""The disk watch of a large workspace costs the worker a bounded share of a command's time, on
each local engine for real; it still names the disk limit when a command fails past it, and
still stops a filler as soon as the disk's free space says the limit may be passed.

The watch measures the workspace by walking it (`sandboxes.backends.local.disk_usage`). A
walk of a large checkout takes a good part of WATCH_EVERY_S; repeated at that pace it kept a
worker's CPU busy for as long as a command ran. The walks now take at most WALK_SHARE_MAX of
the time, as measured by the walks themselves.
"""

import time

from sandboxes.backends.base import ExecOutput, ExecResult, SandboxSpec
from sandboxes.backends.local import WALK_SHARE_MAX, WATCH_EVERY_S, disk_usage

SPEC = SandboxSpec(timeout_s=120, disk_mb=256)
FILES = 20_000  # about 80 MB allocated: a walk takes several times WATCH_EVERY_S * WALK_SHARE_MAX


def _large_workspace(backend, handle, *, files: int = FILES, content: bytes = b"x = 1\n") -> float:
    """Fill the workspace with `files` small files; return one walk's CPU seconds."""
    root = backend.workspace_path(handle)
    for d in range(files // 100):
        sub = root / f"d{d}"
        sub.mkdir()
        for f in range(100):
            (sub / f"f{f}.py").write_bytes(content)
    started = time.thread_time()
    disk_usage(root, stop_after=1 << 40)
    walk = time.thread_time() - started
    assert walk > WATCH_EVERY_S * WALK_SHARE_MAX, "the workspace is too small to test this"
    return walk


def _run(backend, handle, script: str) -> tuple[ExecResult, float]:
    """Run `script`; return its result and the CPU seconds this thread spent pumping it."""
    started = time.thread_time()
    events = list(backend.exec(handle, ["sh", "-c", script], timeout_s=60))
    cpu = time.thread_time() - started
    result = events[-1]
    assert isinstance(result, ExecResult)
    return result, cpu


def test_a_long_command_in_a_large_workspace_does_not_keep_the_worker_walking_it(local_backend):
    handle = local_backend.create(SPEC)
    walk = _large_workspace(local_backend, handle)

    result, cpu = _run(local_backend, handle, "sleep 2")

    assert result.exit_code == 0
    # Every WATCH_EVERY_S, that is 8 walks or more; at most WALK_SHARE_MAX of the time, 2 or 3.
    assert cpu < 4 * walk + 0.05, f"pumping took {cpu:.3f} s of CPU; one walk {walk:.3f} s"


def test_a_failed_command_past_the_disk_limit_is_blamed_on_it_however_recent_the_last_walk(
    local_backend,
):
    handle = local_backend.create(SPEC)
    _large_workspace(local_backend, handle)
    result, _ = _run(local_backend, handle, "sleep 0.5")  # walked at its end: recent
    assert result.exit_code == 0

    # Four files under the per-file limit, together past the workspace's 256 MB.
    filler = "for i in 1 2 3 4; do head -c 60000000 /dev/zero > big$i || exit 1; done; exit 1"
    result, _ = _run(local_backend, handle, filler)

    assert result.exit_code != 0 and not result.timed_out
    assert result.limit_hit == "disk limit reached (disk_mb=256)"


def test_a_command_filling_the_disk_is_stopped_before_the_next_walk_is_due(local_backend):
    """The disk losing more free space than the workspace had left below its limit triggers a
    walk at once: the limit holds about as tightly as when every tick walked."""
    handle = local_backend.create(SandboxSpec(timeout_s=120, disk_mb=32))
    # Empty files: a long walk (one stat each) in a workspace of a few MB.
    walk = _large_workspace(local_backend, handle, files=3 * FILES, content=b"")
    result, _ = _run(local_backend, handle, "sleep 0.5")  # walked at its end: the next is due
    assert result.exit_code == 0  # in 1 / WALK_SHARE_MAX walks' time, 20 * walk from now

    filler = (
        "for i in 1 2 3 4; do head -c 10000000 /dev/zero > big$i || exit 1; done; "
        "echo filled; sleep 60"
    )
    filled_at = None
    for event in local_backend.exec(handle, ["sh", "-c", filler], timeout_s=60):
        if isinstance(event, ExecOutput) and b"filled" in event.data and filled_at is None:
            filled_at = time.monotonic()
        result = event
    stopped_at = time.monotonic()

    assert isinstance(result, ExecResult)
    assert result.exit_code != 0 and not result.timed_out
    assert result.limit_hit == "disk limit reached (disk_mb=32)"
    if filled_at is not None:  # else stopped before it said so: sooner still
        took = stopped_at - filled_at
        assert took < 10 * walk, f"stopped {took:.2f} s after the writes; one walk {walk:.3f} s"


def test_the_walk_never_lists_a_host_directory_a_link_swapped_in(tmp_path, monkeypatch):
    """A running command can swap a directory of its workspace for a link to a host directory
    between the walk's listing of the parent and its listing of the directory (a real command
    won that race within seconds on bubblewrap, and learned from the limit whether 64 MB sat in
    a host directory it cannot see). Here the swap is made at exactly that moment: the walk
    sizes the workspace, never the host directory."""
    import os

    from sandboxes.backends import local

    host = tmp_path / "host"
    host.mkdir()
    with open(host / "big", "wb") as f:
        f.write(os.urandom(1 << 20) * 8)  # 8 MB allocated
    workspace = tmp_path / "workspace"
    (workspace / "d").mkdir(parents=True)
    (workspace / "d" / "small").write_text("x")
    scandir, calls = os.scandir, []

    def swap_after_the_top_listing(target):
        calls.append(target)
        listing = scandir(target)
        if len(calls) == 1:  # the workspace itself: once it is listed, `d` becomes a link
            entries = list(listing)
            listing.close()
            os.rename(workspace / "d", workspace / "moved")
            os.symlink(host, workspace / "d")
            return _Listing(entries)
        return listing

    monkeypatch.setattr(local.os, "scandir", swap_after_the_top_listing)
    assert local.disk_usage(workspace, stop_after=1 << 40) < 1 << 20
    assert len(calls) == 1  # nothing below the swapped name was listed


class _Listing(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass
