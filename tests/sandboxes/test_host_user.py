"""A root worker's bwrap sandboxes run as an unprivileged host user, not as root outside.

Checked from the host: who owns what a command writes and who its processes are, and that a
host file only root may read, bound into a sandbox, cannot be read there (it could while the
sandbox's user was root outside its namespace).
"""

import os
import secrets
import time
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.backends.base import ExecOutput, ExecResult, SandboxSpec
from sandboxes.backends.images import HOME_IN_WORKSPACE
from tests.sandboxes.conftest import BACKEND_FACTORIES, _data_dir

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="a worker that is not root starts bwrap as itself (already unprivileged)",
)

SPEC = SandboxSpec(timeout_s=120, memory_mb=256, pids_max=64, disk_mb=16)


@pytest.fixture
def bwrap():
    with BACKEND_FACTORIES["bwrap"](_data_dir()) as backend:
        yield backend


def run(backend, handle, argv):
    events = list(backend.exec(handle, argv))
    result = events[-1]
    assert isinstance(result, ExecResult)
    return b"".join(e.data for e in events[:-1]).decode(errors="replace"), result


def _processes_with_args(args: list[bytes]) -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:-1] == args:
                        found.append(entry.name)
            except OSError:
                continue
    return found


def _uids(pid: str) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("Uid:"))
    return [int(x) for x in line.split()[1:]]


def test_a_command_runs_as_the_sandboxes_host_user_and_writes_its_files(bwrap):
    host_uid = settings.SANDBOX_HOST_UID
    handle = bwrap.create(SandboxSpec(timeout_s=120, tools_home=True))
    out, result = run(bwrap, handle, ["sh", "-c", "id -u; echo x > out; echo y > $HOME/tool"])
    assert (out, result.exit_code) == ("1000\n", 0)
    workspace = bwrap.workspace_path(handle)
    for path in (workspace / "out", workspace / HOME_IN_WORKSPACE / "tool"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (host_uid, host_uid), path

    # Its processes, seen from the host: every user id is the sandboxes' host user.
    naptime = f"30.{secrets.randbelow(10**6):06d}"
    events = bwrap.exec(handle, ["sh", "-c", f"sleep {naptime} & echo started; wait"])
    try:
        for event in events:
            if isinstance(event, ExecOutput) and b"started" in event.data:
                break
        deadline = time.monotonic() + 10
        while not (found := _processes_with_args([b"sleep", naptime.encode()])):
            assert time.monotonic() < deadline, "the sandbox's sleep never showed in /proc"
            time.sleep(0.01)
        for pid in found:
            assert set(_uids(pid)) == {host_uid}
    finally:
        events.close()


def test_a_root_only_host_file_bound_in_cannot_be_read(bwrap):
    handle = bwrap.create(SandboxSpec(timeout_s=120, tools_home=True, files={"notes": b"ok"}))
    # Files only root may read, in two directories bound into the sandbox.
    spec_file = bwrap.files_path(handle.external_id) / "notes"
    spec_file.chmod(0o600)
    home_file = bwrap.workspace_path(handle) / HOME_IN_WORKSPACE / "root-only"
    home_file.write_text("ROOT-ONLY")
    home_file.chmod(0o600)
    assert (spec_file.stat().st_uid, home_file.stat().st_uid) == (0, 0)

    for inside in ("/convoy/files/notes", "/convoy/home/root-only"):
        out, result = run(bwrap, handle, ["cat", inside])
        assert result.exit_code != 0, inside
        assert "Permission denied" in out
        assert "ROOT-ONLY" not in out


def test_sandboxes_sharing_the_host_user_do_not_share_a_process_limit(bwrap):
    """RLIMIT_NPROC counts a real user's processes host-wide: each sandbox's are held by its
    own cgroup, so one sandbox's processes never count against another's limit."""
    spec = SandboxSpec(timeout_s=120, pids_max=40)
    first, second = bwrap.create(spec), bwrap.create(spec)
    many = 'p=; for i in $(seq 25); do sleep 30 & p="$p $!"; done; echo started; '
    holding = bwrap.exec(first, ["sh", "-c", many + "wait"])
    try:
        for event in holding:
            if isinstance(event, ExecOutput) and b"started" in event.data:
                break
        out, result = run(bwrap, second, ["sh", "-c", many + "kill $p"])
        assert (out.strip(), result.exit_code) == ("started", 0)
    finally:
        holding.close()


def test_what_the_host_writes_in_a_workspace_is_the_sandboxes_to_change(bwrap):
    handle = bwrap.create(SPEC)
    bwrap.write_file(handle, "/workspace/made/by/host.txt", b"host")
    out, result = run(
        bwrap, handle, ["sh", "-c", "echo changed > made/by/host.txt && touch made/by/new"]
    )
    assert result.exit_code == 0, out
    workspace = bwrap.workspace_path(handle)
    for path in (workspace / "made", workspace / "made/by/host.txt", workspace / "made/by/new"):
        assert Path(path).stat().st_uid == settings.SANDBOX_HOST_UID, path
