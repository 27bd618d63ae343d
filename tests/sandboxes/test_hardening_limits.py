"""A command stopped by one of its sandbox's limits says which (`ExecResult.limit_hit`), on each
local engine for real: a fork bomb, a memory hog and a disk filler each end with one clear
reason instead of a bare exit code; an ordinary failure names none.
"""

import pytest

from sandboxes.backends import local
from sandboxes.backends.base import ExecResult, SandboxSpec
from sandboxes.backends.local import DISK_LIMIT_EXIT

SPEC = SandboxSpec(timeout_s=120, memory_mb=128, pids_max=16, disk_mb=8)
# Bounded: background sleeps until fork fails (their output elsewhere, so they hold no pipe).
FORK_BOMB = "while sleep 60 >/dev/null 2>&1 & do :; done"
HOG = "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n"


def run(backend, handle, argv, **kwargs) -> ExecResult:
    result = list(backend.exec(handle, argv, timeout_s=60, **kwargs))[-1]
    assert isinstance(result, ExecResult)
    return result


def test_a_fork_bomb_reports_the_process_limit(local_backend):
    handle = local_backend.create(SPEC)
    result = run(local_backend, handle, ["sh", "-c", FORK_BOMB])
    assert result.exit_code != 0 and not result.timed_out
    assert result.limit_hit == "process limit reached (pids_max=16)"


def test_a_memory_hog_reports_the_memory_limit(local_backend):
    handle = local_backend.create(SPEC)
    result = run(local_backend, handle, ["python3", "-c", HOG])
    assert result.exit_code != 0 and not result.timed_out
    assert result.limit_hit == "memory limit reached (memory_mb=128)"


@pytest.mark.parametrize(
    "script",
    [
        "dd if=/dev/zero of=/workspace/big bs=1M count=50",  # one file past RLIMIT_FSIZE
        "i=0; while :; do head -c 1000000 /dev/zero > f$i || exit 1; i=$((i+1)); done",
    ],
    ids=["one-big-file", "many-small-files"],
)
def test_a_disk_filler_reports_the_disk_limit(local_backend, script):
    handle = local_backend.create(SPEC)
    result = run(local_backend, handle, ["sh", "-c", script])
    assert result.exit_code != 0 and not result.timed_out
    assert result.limit_hit == "disk limit reached (disk_mb=8)"


def test_a_filler_faster_than_the_watch_does_not_succeed(local_backend, monkeypatch):
    """Three files under the per-file limit, together past the workspace's, written before the
    watch's first look (12 x 255 MB took 108 ms): the command exited 0 and the limit was only
    noted in the log. The watch's ticks are put off here, so only the look at its end sees it."""
    monkeypatch.setattr(local, "WATCH_EVERY_S", 600.0)
    handle = local_backend.create(SPEC)
    filler = "for i in 1 2 3; do head -c 5000000 /dev/zero > f$i || exit 1; done"
    result = run(local_backend, handle, ["sh", "-c", filler])
    assert result.exit_code == DISK_LIMIT_EXIT and not result.timed_out
    assert result.limit_hit == "disk limit reached (disk_mb=8)"
    # Back under the limit, commands succeed again.
    assert run(local_backend, handle, ["sh", "-c", "rm f1 f2 f3"]).exit_code == 0


def test_empty_files_count_against_the_disk_limit(local_backend, monkeypatch):
    """Empty files allocate no blocks: 200,000 of them passed disk_mb=16 unseen. The cap here is
    lowered to keep the test short; `entries_max_for` gives the real one."""
    monkeypatch.setattr(local, "ENTRIES_MIN", 2_000)
    assert local.entries_max_for(8) == 2_048
    handle = local_backend.create(SPEC)
    filler = (
        'python3 -c \'for i in range(5000): open(f"e{i}", "w").close()\' && echo made && sleep 20'
    )
    result = run(local_backend, handle, ["sh", "-c", filler])
    assert result.exit_code != 0 and not result.timed_out
    assert result.duration_ms < 15_000, "stopped by the watch, not at its end"
    assert result.limit_hit == "disk limit reached (disk_mb=8)"


def test_the_entry_cap_follows_the_disk_limit():
    assert local.entries_max_for(16) == local.ENTRIES_MIN == 65_536
    assert local.entries_max_for(2048) == 524_288  # one 4 KB block an entry


def test_an_ordinary_failure_names_no_limit(local_backend):
    handle = local_backend.create(SPEC)
    result = run(local_backend, handle, ["sh", "-c", "echo 'no such thing' >&2; exit 3"])
    assert (result.exit_code, result.limit_hit) == (3, None)
    # A limit hit by an earlier command is not blamed on a later one.
    run(local_backend, handle, ["sh", "-c", FORK_BOMB])
    result = run(local_backend, handle, ["sh", "-c", "exit 4"])
    assert (result.exit_code, result.limit_hit) == (4, None)
