"""bubblewrap's cgroups: commands born in them, spares kept for the next sandbox, and the worker
never inside one (so never an OOM candidate or a kill target of a sandbox), for real.

The host of our CI is cgroup v1, where commands are born in their cgroups; the tests that rely
on it say so and fail (not skip) on another host, where `launch_mode` tells what it does.
"""

import os
import subprocess
import threading
from pathlib import Path

import pytest

from sandboxes.backends import cgroups
from sandboxes.backends.base import ExecOutput, ExecResult, SandboxSpec
from tests.support import PYTHON, ROOT, wait_for

SPEC = SandboxSpec(timeout_s=120, memory_mb=256, pids_max=64)
HOG = "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n"
ALLOC_100MB = "x = bytearray(100 << 20); x[::4096] = b'y' * len(x[::4096]); print('ok')"


@pytest.fixture
def bwrap():
    from tests.sandboxes.conftest import BACKEND_FACTORIES, _data_dir

    with BACKEND_FACTORIES["bwrap"](_data_dir()) as backend:
        yield backend


def run(backend, handle, argv, **kwargs):
    events = list(backend.exec(handle, argv, **kwargs))
    result = events[-1]
    assert isinstance(result, ExecResult)
    return b"".join(e.data for e in events[:-1]).decode(errors="replace"), result


def sandbox_cgroups(backend, handle) -> list[str]:
    return backend.ws.meta_read(handle.external_id).cgroups


def spares_of(backend, pid: int) -> list[str]:
    return [
        p
        for p in cgroups.cgroups_owned(backend.install)
        if cgroups.spare_pid(p, backend.install) == pid
    ]


def test_a_command_is_born_in_its_sandboxs_cgroups_and_the_worker_stays_out(bwrap):
    assert not cgroups._v2(), "this host is expected to be cgroup v1: " + cgroups.launch_mode()
    handle = bwrap.create(SPEC)
    paths = sandbox_cgroups(bwrap, handle)
    assert len(paths) == len(cgroups._v1_present()) > 0
    events = bwrap.exec(handle, ["sh", "-c", "echo started; exec sleep 60"], timeout_s=60)
    first = next(events)
    assert isinstance(first, ExecOutput) and first.data == b"started\n"
    for path in paths:
        inside = {int(p) for p in Path(path, "cgroup.procs").read_text().split()}
        assert inside, f"no process in {path}"
        assert os.getpid() not in inside
    # No thread of the worker is left in a sandbox's cgroup once its command is started.
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        where = (task / "cgroup").read_text()
        assert handle.external_id not in where, where
    events.close()  # stops the command
    bwrap.terminate(handle)


def test_a_spare_cgroup_gets_the_next_sandboxs_own_limits(bwrap):
    roomy = bwrap.create(SandboxSpec(timeout_s=120, memory_mb=1024, pids_max=256))
    out, result = run(bwrap, roomy, ["python3", "-c", ALLOC_100MB])
    assert (out, result.exit_code) == ("ok\n", 0)
    bwrap.terminate(roomy)
    kept = spares_of(bwrap, os.getpid())
    assert kept, "the terminated sandbox's cgroups were not kept"

    tight = bwrap.create(SandboxSpec(timeout_s=120, memory_mb=64, pids_max=64))
    paths = sandbox_cgroups(bwrap, tight)
    assert all(p.endswith(tight.external_id) for p in paths)
    assert len(spares_of(bwrap, os.getpid())) == len(kept) - len(paths)  # one spare claimed
    out, result = run(bwrap, tight, ["python3", "-c", ALLOC_100MB], timeout_s=60)
    assert result.exit_code != 0 and not result.timed_out, out  # 100 MB > the new 64 MB
    bwrap.terminate(tight)

    roomy_again = bwrap.create(SandboxSpec(timeout_s=120, memory_mb=1024, pids_max=256))
    out, result = run(bwrap, roomy_again, ["python3", "-c", ALLOC_100MB])
    assert (out, result.exit_code) == ("ok\n", 0), "the 64 MB limit stayed with the spare"


def test_killing_a_sandboxs_cgroups_spares_the_worker_while_its_launcher_is_inside(bwrap):
    handle = bwrap.create(SPEC)
    paths = sandbox_cgroups(bwrap, handle)
    inside, leave = threading.Event(), threading.Event()

    def stay() -> None:  # the launcher thread, caught inside the sandbox's cgroups
        inside.set()
        leave.wait(30)

    launched = cgroups.spawn_inside(paths, stay, lambda: None)
    assert inside.wait(10)
    listed = {int(p) for path in paths for p in Path(path, "cgroup.procs").read_text().split()}
    assert os.getpid() in listed  # cgroup v1 lists a process when one of its threads is in
    assert os.getpid() not in cgroups.cgroup_pids(paths)
    cgroups.cgroup_kill(paths, timeout=1)  # what a terminate from another process does
    leave.set()
    launched.result(timeout=10)
    out, result = run(bwrap, handle, ["sh", "-c", "echo still here"])
    assert (out, result.exit_code) == ("still here\n", 0)


WORKER = """
import os, sys
from pathlib import Path
from sandboxes.backends.bubblewrap import BubblewrapBackend
from sandboxes.backends.base import SandboxSpec
backend = BubblewrapBackend(Path(sys.argv[1]))
handle = backend.create(SandboxSpec(timeout_s=60))
list(backend.exec(handle, ["true"]))
backend.terminate(handle)
print(os.getpid(), flush=True)
if sys.argv[2] == "crash":
    os._exit(0)  # no atexit: as a worker killed with SIGKILL
"""


def _worker(bwrap, how: str) -> int:
    done = subprocess.run(
        [PYTHON, "-c", WORKER, str(bwrap.data_dir), how],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout.split()[-1])


def test_a_worker_that_exits_removes_its_spare_cgroups(bwrap):
    pid = _worker(bwrap, "exit")
    assert spares_of(bwrap, pid) == []


def test_the_reaper_removes_a_dead_workers_spares_and_keeps_a_live_ones(bwrap):
    dead = _worker(bwrap, "crash")
    assert spares_of(bwrap, dead), "the crashed worker left no spare to reap"
    ours = bwrap.create(SPEC)
    bwrap.terminate(ours)  # this (live) process keeps a spare
    assert spares_of(bwrap, os.getpid())
    bwrap.sweep(set(), grace_s=0)
    wait_for(lambda: not spares_of(bwrap, dead), timeout=10, what="the dead worker's spares")
    assert spares_of(bwrap, os.getpid()), "the reaper removed a live worker's spare"


def test_a_sandbox_rewritten_by_another_process_is_read_afresh(bwrap):
    handle = bwrap.create(SandboxSpec(timeout_s=120, labels={"who": "first"}))
    assert bwrap.attach(handle.external_id).labels["who"] == "first"  # read, and remembered
    rewrite = (
        "import sys; from pathlib import Path; from sandboxes.workspaces import Workspaces\n"
        "ws = Workspaces(Path(sys.argv[1]) / 'sandboxes'); meta = ws.meta_read(sys.argv[2])\n"
        "meta.labels['who'] = 'other'; ws.meta_write(meta)\n"
    )
    subprocess.run(
        [PYTHON, "-c", rewrite, str(bwrap.data_dir), handle.external_id],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    assert bwrap.attach(handle.external_id).labels["who"] == "other"


def test_a_sandbox_terminated_by_another_process_has_its_cgroups_removed_not_kept(bwrap):
    handle = bwrap.create(SPEC)
    run(bwrap, handle, ["true"])
    paths = sandbox_cgroups(bwrap, handle)
    terminate = (
        "import sys; from pathlib import Path\n"
        "from sandboxes.backends import cgroups\n"
        "from sandboxes.backends.bubblewrap import BubblewrapBackend\n"
        "backend = BubblewrapBackend(Path(sys.argv[1]))\n"
        "backend.terminate(backend.attach(sys.argv[2]))\n"
        "print(len(cgroups._spares_here()))\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", terminate, str(bwrap.data_dir), handle.external_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # A command of ours could have been starting in them: the other process keeps no spare.
    assert done.stdout.split() == ["0"]
    assert not any(Path(p).exists() for p in paths)
