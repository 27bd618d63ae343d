"""What a sandboxed command must not reach, tried against each local engine for real.

Host files (/root, /home, the data dir, another sandbox's workspace), the app's environment,
the host's loopback network, and the host's health under a fork bomb, a memory hog and a disk
filler; and escapes from the workspace through `..` or symbolic links.
"""

import dataclasses
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.backends.base import ExecResult, NetworkPolicy, SandboxError, SandboxSpec

SPEC = SandboxSpec(timeout_s=120, memory_mb=256, pids_max=64, disk_mb=16)


def run(backend, handle, argv, **kwargs):
    events = list(backend.exec(handle, argv, **kwargs))
    result = events[-1]
    assert isinstance(result, ExecResult)
    out = b"".join(e.data for e in events[:-1]).decode(errors="replace")
    return out, result


@pytest.fixture
def canaries(local_backend):
    """Secret files where a sandbox must not look; removed afterwards."""
    token = secrets.token_hex(8)
    other = local_backend.create(SPEC)
    paths = [
        Path("/root") / f"convoy-canary-{token}",
        Path("/home") / f"convoy-canary-{token}",
        Path(settings.DATA_DIR) / f"convoy-canary-{token}",
        local_backend.workspace_path(other) / f"convoy-canary-{token}",
    ]
    for path in paths:
        path.write_text(f"CANARY-{token}")
    yield token, paths
    for path in paths:
        path.unlink(missing_ok=True)


def test_host_files_and_other_workspaces_cannot_be_read(local_backend, canaries):
    token, paths = canaries
    handle = local_backend.create(SPEC)
    for path in paths:
        out, result = run(local_backend, handle, ["cat", str(path)])
        assert result.exit_code != 0, path
        assert f"CANARY-{token}" not in out
    out, _ = run(local_backend, handle, ["sh", "-c", "echo /* /workspace/* /workspace/.*"])
    assert "convoy-canary" not in out
    assert "/usr" in out.split() and "/home" not in out.split()


def test_the_hosts_root_only_files_under_etc_are_not_copied_in(local_backend):
    # A sandbox without an image gets a minimal /etc copied from the host's: it took
    # /etc/ssl/private (TLS private keys), which a sandbox's user (root outside) could read.
    handle = local_backend.create(SPEC)
    out, _ = run(
        local_backend,
        handle,
        [
            "sh",
            "-c",
            "test -d /etc/ssl/certs && echo CERTS-THERE;"
            " test -e /etc/ssl/private && echo PRIVATE-THERE; true",
        ],
    )
    assert "CERTS-THERE" in out  # what programs need is there
    assert "PRIVATE-THERE" not in out


def test_the_apps_environment_is_not_visible(local_backend, monkeypatch):
    monkeypatch.setenv("CONVOY_TEST_CANARY_ENV", "env-canary-value")
    handle = local_backend.create(SandboxSpec(timeout_s=60, env={"GIVEN": "yes"}))
    out, _ = run(local_backend, handle, ["sh", "-c", "env; cat /proc/1/environ 2>/dev/null"])
    assert "GIVEN=yes" in out
    for leaked in ("env-canary-value", "SECRET_KEY", "DATABASE_URL", "PYTEST", "VIRTUAL_ENV"):
        assert leaked not in out


PRELOAD_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void canary(void) {
    const char *path = getenv("CONVOY_TEST_PRELOAD_CANARY");
    FILE *f = fopen(path ? path : "/nonexistent", "a");
    if (f) { fputs("loaded on the host\n", f); fclose(f); }
}
"""


def test_a_commands_environment_never_reaches_the_host_side_engine(local_backend, tmp_path):
    """The command's variables chose the host's own programs: its PATH picked the `bwrap` the
    worker ran as root, and LD_PRELOAD put a library of the campaign's into it (a variant's
    `env`, `image.env` and an OCI image's own Env are all the manager's to write)."""
    canary = tmp_path / "canary"
    evil = tmp_path / "bin"
    evil.mkdir()
    for name in ("bwrap", "runsc", "prlimit", "sh"):
        fake = evil / name
        fake.write_text(f"#!/bin/sh\necho ran {name} >> {canary}\nexit 1\n")
        fake.chmod(0o755)
    library = tmp_path / "canary.so"
    source = tmp_path / "canary.c"
    source.write_text(PRELOAD_C)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, timeout=60
    )
    given = {
        "PATH": f"{evil}:/usr/bin:/bin",
        "LD_PRELOAD": str(library),
        "CONVOY_TEST_PRELOAD_CANARY": str(canary),
    }
    handle = local_backend.create(SandboxSpec(timeout_s=60, env=given))
    out, result = run(local_backend, handle, ["/bin/sh", "-c", "echo PATH=$PATH"])
    assert not canary.exists(), canary.read_text()
    assert result.exit_code == 0, out
    assert f"PATH={evil}:/usr/bin:/bin" in out  # the command still gets what it was given
    out, result = run(
        local_backend, handle, ["/bin/sh", "-c", "echo $LD_PRELOAD"], env={"PATH": str(evil)}
    )
    assert not canary.exists(), canary.read_text()


def test_the_hosts_kernel_settings_cannot_be_changed(local_backend):
    """The worker runs as root, so a bwrap sandbox's user is root outside its namespace, and
    the kernel let such a process write /proc/sys whatever its capabilities: a command could
    set `kernel.core_pattern` to a program of its workspace, run as root at the next crash.
    Tried with a harmless setting, put back if the sandbox got through."""
    setting = Path("/proc/sys/fs/lease-break-time")
    before = setting.read_text()
    wanted = str(int(before) + 1)
    handle = local_backend.create(SPEC)
    try:
        out, _ = run(
            local_backend,
            handle,
            ["sh", "-c", f"echo {wanted} > {setting}; cat /proc/sys/kernel/core_pattern"],
        )
        assert setting.read_text() == before
    finally:
        setting.write_text(before)
    # And what bwrap hides of the host's /proc (gVisor shows its own).
    out, _ = run(local_backend, handle, ["sh", "-c", "cat /proc/keys /proc/timer_list; true"])
    assert "jiffies" not in out


def test_the_hosts_kernel_boot_options_are_not_shown(local_backend):
    """/proc/cmdline told a bwrap sandbox the host kernel's boot options (gVisor shows its own)."""
    host = Path("/proc/cmdline").read_text().strip()
    assert host, "the host shows no boot options to hide"
    handle = local_backend.create(SPEC)
    out, _ = run(local_backend, handle, ["sh", "-c", "cat /proc/cmdline; true"])
    assert host not in out  # bwrap: unreadable, as the other hidden files are


def test_a_server_on_the_hosts_loopback_cannot_be_reached(local_backend):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        handle = local_backend.create(SPEC)
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
        out, result = run(local_backend, handle, ["python3", "-c", probe], timeout_s=30)
        assert result.exit_code != 0
        assert "Error" in out
        # A connection that had arrived would be waiting in the backlog.
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
        # The control: the same probe from a sandbox with network "open" does connect.
        opened = local_backend.create(SandboxSpec(timeout_s=60, network=NetworkPolicy.OPEN))
        _, result = run(local_backend, opened, ["python3", "-c", probe], timeout_s=30)
        assert result.exit_code == 0
        server.accept()[0].close()


def _host_still_fine(local_backend):
    assert subprocess.run(["true"], check=False).returncode == 0
    bystander = local_backend.create(SandboxSpec(timeout_s=60))
    out, result = run(local_backend, bystander, ["sh", "-c", "echo alive"])
    assert (out, result.exit_code) == ("alive\n", 0)


def test_a_fork_bomb_is_stopped_without_harming_the_host(local_backend):
    handle = local_backend.create(SPEC)
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 30"
    _, result = run(local_backend, handle, ["sh", "-c", bomb], timeout_s=4)
    # Stopped either by the process limit (the shell gives up) or by the timeout.
    assert result.timed_out or result.exit_code != 0
    _host_still_fine(local_backend)
    out, result = run(local_backend, handle, ["sh", "-c", "echo recovered"])
    assert out == "recovered\n"


def test_a_memory_hog_is_stopped(local_backend):
    handle = local_backend.create(SPEC)
    hog = "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n"
    _, result = run(local_backend, handle, ["python3", "-c", hog], timeout_s=60)
    assert result.exit_code != 0 and not result.timed_out
    _host_still_fine(local_backend)


def test_a_disk_filler_is_stopped_at_the_size_limit(local_backend):
    handle = local_backend.create(SPEC)
    _, result = run(
        local_backend,
        handle,
        ["dd", "if=/dev/zero", "of=/workspace/fill", "bs=1M", "count=500"],
        timeout_s=60,
    )
    assert result.exit_code != 0
    size = os.path.getsize(local_backend.workspace_path(handle) / "fill")
    assert size <= SPEC.disk_mb * 1024 * 1024
    _host_still_fine(local_backend)


def test_a_disk_filler_writing_many_small_files_is_stopped(local_backend):
    handle = local_backend.create(SPEC)
    filler = "i=0; while :; do head -c 1000000 /dev/zero > f$i || exit 1; i=$((i+1)); done"
    out, result = run(local_backend, handle, ["sh", "-c", filler], timeout_s=60)
    assert not result.timed_out and result.exit_code != 0
    assert "disk limit" in out
    written = sum(p.stat().st_size for p in local_backend.workspace_path(handle).iterdir())
    assert SPEC.disk_mb * 1024 * 1024 < written < 20 * SPEC.disk_mb * 1024 * 1024
    _host_still_fine(local_backend)


def test_dotdot_and_symlink_escapes_from_the_workspace_fail(local_backend, canaries):
    token, paths = canaries
    handle = local_backend.create(SPEC)
    host_canary = paths[0]
    for bad in ("../meta.json", "/workspace/../etc/passwd", "/etc/passwd", "a/../../x"):
        with pytest.raises(SandboxError):
            local_backend.read_file(handle, bad)
        with pytest.raises(SandboxError):
            local_backend.write_file(handle, bad, b"x")
    # Links made inside the sandbox resolve inside it, and the host never follows them.
    run(
        local_backend,
        handle,
        ["sh", "-c", f"ln -s {host_canary} link; ln -s /root dirlink; ln -s .. up"],
    )
    out, _ = run(local_backend, handle, ["sh", "-c", "cat link up/meta.json 2>&1"])
    assert f"CANARY-{token}" not in out
    for path in ("link", "up/meta.json", "dirlink/" + host_canary.name):
        with pytest.raises(SandboxError):
            local_backend.read_file(handle, path)
    with pytest.raises(SandboxError):
        local_backend.write_file(handle, "dirlink/planted", b"x")
    assert not Path("/root/planted").exists()


def test_the_tools_area_cannot_be_made_a_host_directory(local_backend, canaries):
    """The tools area is a directory of the workspace, bound at /convoy/home. A command that
    replaces it with a symlink to a host directory must not get that directory bound in its
    place: not for the sandbox's next command, not in a fork of its snapshot (on gVisor a new
    container, whose mounts are made then). The next ones find a fresh, empty tools area."""
    token, paths = canaries
    spec = dataclasses.replace(SPEC, tools_home=True)
    handle = local_backend.create(spec)
    fork = None
    try:
        out, result = run(
            local_backend,
            handle,
            ["sh", "-c", "cd /workspace && rm -rf .convoy-home && ln -s /root .convoy-home"],
        )
        assert result.exit_code == 0, out
        assert os.path.islink(local_backend.workspace_path(handle) / ".convoy-home")
        fork = local_backend.create_from_snapshot(local_backend.snapshot(handle), spec)
        probe = f"cat /convoy/home/{paths[0].name}; echo mine > /convoy/home/planted"
        for sandbox in (handle, fork):
            out, _ = run(local_backend, sandbox, ["sh", "-c", probe])
            assert f"CANARY-{token}" not in out
            assert not Path("/root/planted").exists()
        out, result = run(local_backend, fork, ["cat", "/workspace/.convoy-home/planted"])
        assert (result.exit_code, out) == (0, "mine\n")
    finally:
        Path("/root/planted").unlink(missing_ok=True)
        for sandbox in (handle, fork):
            if sandbox is not None:
                local_backend.terminate(sandbox)


def test_a_fork_does_not_tell_whether_a_host_path_exists(local_backend):
    """A fork made its tools area with `mkdir(exist_ok=True)`, which followed a symlink the
    snapshot held: a host directory there gave a fork, anything else a failure, a one-bit
    answer about any host path."""
    spec = dataclasses.replace(SPEC, tools_home=True)
    handle = local_backend.create(spec)
    forks = []
    try:
        for target in ("/root", f"/nonexistent-{secrets.token_hex(4)}"):
            out, result = run(
                local_backend,
                handle,
                [
                    "sh",
                    "-c",
                    f"cd /workspace && rm -rf .convoy-home && ln -s {target} .convoy-home",
                ],
            )
            assert result.exit_code == 0, out
            forks.append(local_backend.create_from_snapshot(local_backend.snapshot(handle), spec))
            out, result = run(local_backend, forks[-1], ["sh", "-c", "cd /convoy/home && echo *"])
            assert (result.exit_code, out) == (0, "*\n"), target  # a fresh, empty tools area
    finally:
        for sandbox in (handle, *forks):
            local_backend.terminate(sandbox)


def test_a_fifo_in_the_workspace_does_not_stall_file_reads_and_writes(local_backend):
    """The host reads and writes workspace files for the services (`sandbox_read_file`,
    `sandbox_write_file`); a FIFO a command left at that name must be refused at once, not
    wait forever for a writer or a reader (a worker thread lost)."""
    import threading

    handle = local_backend.create(SPEC)
    _, result = run(local_backend, handle, ["mkfifo", "/workspace/report.json"])
    assert result.exit_code == 0
    if not (local_backend.workspace_path(handle) / "report.json").is_fifo():
        local_backend.terminate(handle)
        pytest.skip("this engine keeps a command's FIFOs in its own kernel, not on the host")
    errors: list = []

    def attempt(call) -> None:
        try:
            call()
        except SandboxError as exc:
            errors.append(str(exc))

    calls = (
        lambda: local_backend.read_file(handle, "report.json"),
        lambda: local_backend.write_file(handle, "report.json", b"x"),
    )
    threads = [threading.Thread(target=attempt, args=(c,), daemon=True) for c in calls]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(10)
        assert not any(t.is_alive() for t in threads), "a file call waits on the FIFO"
        assert len(errors) == 2, errors
    finally:
        fifo = local_backend.workspace_path(handle) / "report.json"
        while any(t.is_alive() for t in threads) and fifo.is_fifo():
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))  # let a stuck call go on
            for thread in threads:
                thread.join(0.2)
        local_backend.terminate(handle)


def test_a_sandbox_made_where_another_was_removed_starts_empty_and_limited(local_backend):
    first = local_backend.create(SPEC)
    local_backend.write_file(first, "/workspace/left-behind", b"the first sandbox's file")
    local_backend.terminate(first)
    # The removal left a ready-made directory behind; the next sandbox takes it.
    second = local_backend.create(SPEC)
    assert not any(local_backend.workspace_path(second).iterdir())
    hog = "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n"
    _, result = run(local_backend, second, ["python3", "-c", hog], timeout_s=60)
    assert result.exit_code != 0 and not result.timed_out
    _host_still_fine(local_backend)
