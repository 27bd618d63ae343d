"""A root worker's bwrap sandboxes run as unprivileged host users, one per run, not as root.

Checked from the host: who owns what a command writes and who its processes are, that a host
file only root may read, bound into a sandbox, cannot be read there (it could while the
sandbox's user was root outside its namespace), and that a host process running as one run's
user (a command that escaped its mount namespace) cannot reach another run's files.
"""

import multiprocessing
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.backends.base import ExecOutput, ExecResult, SandboxError, SandboxSpec
from sandboxes.backends.host_user import HostIds, UidClaims
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


def _groups(pid: str) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("Groups:"))
    return [int(x) for x in line.split()[1:]]


def as_host_user(uid: int, group: int, script: str, *args: str) -> subprocess.CompletedProcess:
    """`script` run by a host process with a sandbox's user, group and passage group: what a
    command that escaped its mount namespace would be."""
    ids = [f"--reuid={uid}", f"--regid={uid}", f"--groups={group}"]
    return subprocess.run(
        ["setpriv", *ids, "--", "sh", "-c", script, "sh", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_command_runs_as_the_sandboxes_host_user_and_writes_its_files(bwrap):
    handle = bwrap.create(SandboxSpec(timeout_s=120, tools_home=True))
    host_uid = bwrap.workspace_owner(handle)[0]
    first, last = settings.SANDBOX_HOST_UIDS
    assert first < host_uid <= last  # the range's first id is the passage group
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
            # Its one supplementary group only passes through shared directories.
            assert _groups(pid) == [settings.SANDBOX_HOST_UIDS[0]]
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
    host_uid = bwrap.workspace_owner(handle)[0]
    for path in (workspace / "made", workspace / "made/by/host.txt", workspace / "made/by/new"):
        assert Path(path).stat().st_uid == host_uid, path


def test_another_runs_sandbox_cannot_reach_this_ones_files_even_outside_its_namespace(bwrap):
    """Two runs' sandboxes run as two host users, and each sandbox's directory is its own
    user's: a host process with the other run's user (a command that escaped its mount
    namespace) can neither read, list nor write this one's workspace. While every sandbox ran
    as one host user, it could."""
    mine, theirs = bwrap.create(SPEC), bwrap.create(SPEC)
    for handle in (mine, theirs):
        out, result = run(bwrap, handle, ["sh", "-c", "echo PRIVATE > secret"])
        assert result.exit_code == 0, out
    workspace = bwrap.workspace_path(mine)
    their_uid = bwrap.workspace_path(theirs).stat().st_uid
    group = settings.DATA_DIR.stat().st_gid  # the passage group every sandbox has
    # Its own files are in its reach: the refusals below are not the path's fault.
    own = as_host_user(their_uid, group, 'cat "$1"/secret', str(bwrap.workspace_path(theirs)))
    assert (own.returncode, own.stdout) == (0, "PRIVATE\n"), own.stderr
    read = as_host_user(their_uid, group, 'cat "$1"/secret', str(workspace))
    assert (read.returncode, read.stdout) != (0, "PRIVATE\n")
    assert "Permission denied" in read.stderr, read.stderr
    for script in ('ls "$1"', 'echo x > "$1"/planted', 'ls "$1"/..'):
        tried = as_host_user(their_uid, group, script, str(workspace))
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, script
    assert not (workspace / "planted").exists()
    assert bwrap.workspace_owner(mine) != bwrap.workspace_owner(theirs)


def test_a_runs_forks_share_its_host_user_and_can_change_the_snapshots_files(bwrap):
    source = bwrap.create(SPEC)
    out, result = run(bwrap, source, ["sh", "-c", "mkdir d && echo 1 > d/f"])
    assert result.exit_code == 0, out
    snapshot = bwrap.snapshot(source)
    forks = bwrap.fork(snapshot, SPEC, 2)
    assert {bwrap.workspace_owner(f) for f in forks} == {bwrap.workspace_owner(source)}
    for fork in forks:
        out, result = run(bwrap, fork, ["sh", "-c", "echo 2 > d/f && touch d/new && cat d/f"])
        assert (out, result.exit_code) == ("2\n", 0)


@pytest.fixture
def one_run_user(settings):
    """A range of two ids: the passage group and a single run's user."""
    group = settings.SANDBOX_HOST_UIDS[0]
    settings.SANDBOX_HOST_UIDS = (group, group + 1)
    with BACKEND_FACTORIES["bwrap"](_data_dir()) as backend:
        yield backend


def test_a_runs_user_is_held_by_its_snapshot_and_forks_and_reused_once_they_are_gone(
    one_run_user,
):
    bwrap = one_run_user
    run_user = settings.SANDBOX_HOST_UIDS[1]
    source = bwrap.create(SPEC)
    assert bwrap.workspace_owner(source) == (run_user, run_user)
    snapshot = bwrap.snapshot(source)
    bwrap.terminate(source)  # as a run does once its snapshot is taken
    fork = bwrap.create_from_snapshot(snapshot, SPEC)
    assert bwrap.workspace_owner(fork)[0] == run_user
    with pytest.raises(SandboxError, match="CONVOY_SANDBOX_HOST_UIDS") as refused:
        bwrap.create(SPEC)  # every user held: refused at once, not waited for
    assert not refused.value.transient
    bwrap.terminate(fork)
    assert bwrap.claims.held() == {run_user: [str(bwrap.ws.layers_dir / snapshot.external_id)]}
    bwrap.delete_snapshot(snapshot)
    assert bwrap.claims.held() == {}
    again = bwrap.create(SPEC)  # released at teardown: claimed again
    assert bwrap.workspace_owner(again)[0] == run_user


def test_the_reaper_releases_a_user_whose_sandbox_is_gone(one_run_user):
    bwrap = one_run_user
    lost = bwrap.create(SPEC)
    bwrap.ws.remove(lost.external_id)  # a worker that died: the directory went, not the claim
    assert list(bwrap.claims.held()) == [settings.SANDBOX_HOST_UIDS[1]]
    bwrap.sweep(set(), grace_s=0)
    assert bwrap.claims.held() == {}
    bwrap.create(SPEC)


def _claim_many(root: str, ids: HostIds, count: int, start, results) -> None:
    claims = UidClaims(Path(root), ids)
    start.wait(timeout=30)
    got = [claims.claim(Path(root) / f"holder-{os.getpid()}-{i}")[0] for i in range(count)]
    results.put(got)


def test_processes_claiming_at_once_never_get_the_same_user(tmp_path):
    ids = HostIds(group=3_000_000, first=3_000_001, last=3_000_064)
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_claim_many, args=(str(tmp_path), ids, 32, start, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    claimed = got[0] + got[1]
    assert sorted(claimed) == list(range(ids.first, ids.last + 1))  # each once
    with pytest.raises(SandboxError, match="CONVOY_SANDBOX_HOST_UIDS"):
        UidClaims(tmp_path, ids).claim(tmp_path / "one-more")


def test_a_sandboxs_egress_socket_is_its_users_alone(bwrap):
    """The proxy's socket directory and socket are given to the sandbox's own group: another
    run's user may not reach the socket (they were the shared group's)."""
    directory = bwrap.data_dir / "egress-test" / secrets.token_hex(4)
    directory.mkdir(mode=0o700, parents=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(directory / "proxy.sock"))
    try:
        spec = SandboxSpec(timeout_s=120, egress_socket=str(directory / "proxy.sock"))
        mine, theirs = bwrap.create(spec), bwrap.create(SPEC)
        uid = bwrap.workspace_owner(mine)[0]
        st = directory.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, uid, 0o710)
        st = (directory / "proxy.sock").stat()
        assert (st.st_gid, st.st_mode & 0o777) == (uid, 0o660)
        group = settings.DATA_DIR.stat().st_gid
        reach = 'test -S "$1"/proxy.sock && test -w "$1"/proxy.sock'  # connect needs write
        assert as_host_user(uid, group, reach, str(directory)).returncode == 0
        other = bwrap.workspace_owner(theirs)[0]
        assert as_host_user(other, group, reach, str(directory)).returncode != 0
    finally:
        listener.close()


def test_a_run_with_every_host_user_held_fails_naming_the_setting(
    transactional_db, manager, settings, monkeypatch
):
    """Not a wait: the run fails at once, and says which setting to widen."""
    from campaigns.models import RepoRun, RunState
    from campaigns.pipeline import run_execute
    from campaigns.services import campaign_create, campaign_launch
    from sandboxes import services
    from tests.factories import repos_make, spec_for

    group = settings.SANDBOX_HOST_UIDS[0]
    settings.SANDBOX_HOST_UIDS = (group, group + 1)
    monkeypatch.setattr(services, "_backends", {})  # made afresh with the one-user range
    engine = services.backend_get("bwrap")
    holder = engine.data_dir / "another-run"
    holder.mkdir(exist_ok=True)
    engine.claims.claim(holder)  # another run holds the only user
    try:
        tag, _ = repos_make(1)
        spec = spec_for(tag, name="no-host-user", backend="bwrap")
        campaign = campaign_launch(
            campaign=campaign_create(actor=manager, source=spec), actor=manager
        )
        run = RepoRun.objects.get(campaign=campaign)
        assert run_execute(run_id=run.pk) == "failed"
        run.refresh_from_db()
        assert run.state == RunState.FAILED
        assert "CONVOY_SANDBOX_HOST_UIDS" in run.error, run.error
    finally:
        engine.claims.release(group + 1, holder)
        for handle in engine.list({}):
            engine.terminate(handle)
        engine.sweep(set(), grace_s=0)
