"""gVisor specifics: a sandbox's container starts at its first command, and a last command runs
as the container itself. Whatever way a sandbox ends, no runsc container, process or workspace
of it is left on the host."""

import subprocess

import pytest

from sandboxes.backends.base import ExecResult, SandboxError, SandboxSpec
from tests.sandboxes.conftest import BACKEND_FACTORIES, _data_dir
from tests.support import host_processes, wait_for

SPEC = SandboxSpec(timeout_s=120, memory_mb=256)


@pytest.fixture
def gvisor():
    with BACKEND_FACTORIES["gvisor"](_data_dir()) as backend:
        yield backend


def containers(backend) -> list[str]:
    """What `runsc list` shows for this installation's root."""
    out = subprocess.run(
        ["runsc", f"--root={backend.state_root}", "list", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def runsc_processes(backend) -> list[str]:
    """Host processes of any runsc container under this installation's root."""
    flag = f"--root={backend.state_root}".encode()
    return host_processes(lambda args: flag in args)


def result_of(events) -> ExecResult:
    events = list(events)
    assert isinstance(events[-1], ExecResult)
    return events[-1]


def test_a_new_sandbox_runs_nothing_until_its_first_command(gvisor):
    handle = gvisor.create(SPEC)
    assert containers(gvisor) == []
    assert result_of(gvisor.exec(handle, ["true"])).exit_code == 0
    assert len(containers(gvisor)) == 1  # it waits for the next command
    gvisor.terminate(handle)
    gvisor.wait_deletes()
    assert containers(gvisor) == []
    assert runsc_processes(gvisor) == []
    assert not gvisor.ws.dir(handle.external_id).exists()


def test_a_last_command_is_the_container_and_ends_with_it(gvisor):
    handle = gvisor.create(SPEC)
    script = "sleep 30 & echo started; exit 7"  # a leftover process dies with the container
    result = result_of(gvisor.exec(handle, ["sh", "-c", script], last=True))
    assert result.exit_code == 7
    assert containers(gvisor) == []
    assert runsc_processes(gvisor) == []
    # Its bundle held the command's environment (secrets included): gone once runsc read it.
    wait_for(
        lambda: not list(gvisor.ws.dir(handle.external_id).glob("bundle-*")),
        timeout=10,
        what="the last command's bundle removed",
    )
    gvisor.terminate(handle)
    assert not gvisor.ws.dir(handle.external_id).exists()


def test_a_last_command_that_times_out_leaves_nothing_after_terminate(gvisor):
    handle = gvisor.create(SPEC)
    script = "trap '' TERM; (trap '' TERM; sleep 300) & sleep 300"
    result = result_of(gvisor.exec(handle, ["sh", "-c", script], last=True, timeout_s=1.5))
    assert (result.timed_out, result.exit_code) == (True, 124)
    assert runsc_processes(gvisor) == []
    gvisor.terminate(handle)
    gvisor.wait_deletes()
    assert containers(gvisor) == []
    assert not gvisor.ws.dir(handle.external_id).exists()


def test_a_snapshot_of_a_sandbox_leaves_no_container_until_its_next_command(gvisor):
    handle = gvisor.create(SPEC)
    assert result_of(gvisor.exec(handle, ["sh", "-c", "echo base > f"])).exit_code == 0
    snap = gvisor.snapshot(handle)
    gvisor.wait_deletes()
    assert containers(gvisor) == []
    [fork] = gvisor.fork(snap, SPEC, 1)
    events = list(gvisor.exec(fork, ["cat", "f"], last=True))
    assert b"".join(e.data for e in events[:-1]) == b"base\n"
    for h in (handle, fork):
        gvisor.terminate(h)
    gvisor.delete_snapshot(snap)
    gvisor.wait_deletes()
    assert containers(gvisor) == [] and runsc_processes(gvisor) == []


def test_a_platform_the_installed_runsc_lacks_is_refused_up_front(tmp_path):
    from sandboxes.backends.base import SandboxError
    from sandboxes.backends.gvisor import GVisorBackend

    with pytest.raises(SandboxError) as refused:
        GVisorBackend(tmp_path, platform="no-such-platform")
    message = str(refused.value)
    assert "CONVOY_RUNSC_PLATFORM" in message and "ptrace" in message


@pytest.mark.parametrize("last", [False, True], ids=["first-command", "last-command"])
def test_a_container_runsc_cannot_start_is_a_transient_error_not_an_exit_code(gvisor, last):
    handle = gvisor.create(SPEC)
    # Its workspace gone, runsc cannot make the container: the command never runs. That is
    # the engine's failure (a retry may do), whether or not the command was the last one.
    workspace = gvisor.workspace_path(handle)
    workspace.rmdir()
    with pytest.raises(SandboxError) as caught:
        list(gvisor.exec(handle, ["true"], last=last))
    assert caught.value.transient
    assert "runsc" in str(caught.value)
    workspace.mkdir()
    assert result_of(gvisor.exec(handle, ["true"], last=last)).exit_code == 0
    gvisor.terminate(handle)
    gvisor.wait_deletes()
    assert runsc_processes(gvisor) == []
