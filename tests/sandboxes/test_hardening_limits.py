"""A command stopped by one of its sandbox's limits says which (`ExecResult.limit_hit`), on each
local engine for real: a fork bomb, a memory hog and a disk filler each end with one clear
reason instead of a bare exit code; an ordinary failure names none.
"""

import pytest

from sandboxes.backends.base import ExecResult, SandboxSpec

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


def test_an_ordinary_failure_names_no_limit(local_backend):
    handle = local_backend.create(SPEC)
    result = run(local_backend, handle, ["sh", "-c", "echo 'no such thing' >&2; exit 3"])
    assert (result.exit_code, result.limit_hit) == (3, None)
    # A limit hit by an earlier command is not blamed on a later one.
    run(local_backend, handle, ["sh", "-c", FORK_BOMB])
    result = run(local_backend, handle, ["sh", "-c", "exit 4"])
    assert (result.exit_code, result.limit_hit) == (4, None)
