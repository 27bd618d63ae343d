"""One suite every backend passes: streamed output, exit codes, timeouts, caps, files, forks.

Runs against gVisor and bubblewrap (real engines) and the Modal fake where present. Backends
are asked for capabilities, never by name.
"""

import re

import pytest

from sandboxes.backends.base import (
    Capability,
    ExecOutput,
    ExecResult,
    SandboxError,
    SandboxSpec,
)

SPEC = SandboxSpec(timeout_s=120, memory_mb=256)


@pytest.fixture(params=[False, True], ids=["exec", "last-exec"])
def last(request) -> bool:
    """Each case both as an ordinary command and as the sandbox's last (`exec(last=True)`)."""
    return request.param


def run(backend, handle, argv, **kwargs):
    events = list(backend.exec(handle, argv, **kwargs))
    assert isinstance(events[-1], ExecResult), events
    outputs = [e for e in events[:-1] if isinstance(e, ExecOutput)]
    assert len(outputs) == len(events) - 1
    return outputs, events[-1]


def text(outputs, stream):
    return b"".join(e.data for e in outputs if e.stream == stream).decode()


def test_output_streams_in_order_with_stdout_and_stderr_apart(backend, last):
    handle = backend.create(SPEC)
    script = "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three"
    outputs, result = run(backend, handle, ["sh", "-c", script], last=last)
    assert text(outputs, "stdout") == "one\nthree\n"
    assert text(outputs, "stderr") == "two\n"
    order = [(e.stream, e.data.decode().strip()) for e in outputs if e.data.strip()]
    assert order == [("stdout", "one"), ("stderr", "two"), ("stdout", "three")]
    assert result.exit_code == 0
    assert result.bytes_out == len("one\ntwo\nthree\n")


@pytest.mark.parametrize(("argv", "code"), [(["true"], 0), (["sh", "-c", "exit 3"], 3),
                                            (["sh", "-c", "exit 42"], 42),
                                            (["sh", "-c", "kill -9 $$"], 137)])  # fmt: skip
def test_exit_codes_are_results_not_errors(backend, argv, code, last):
    handle = backend.create(SPEC)
    _, result = run(backend, handle, argv, last=last)
    assert (result.exit_code, result.timed_out, result.truncated) == (code, False, False)


def test_timeout_kills_a_tree_that_ignores_sigterm(backend, last):
    handle = backend.create(SPEC)
    script = (
        "trap '' TERM; "
        "(trap '' TERM; while :; do date +%s%N > beat; sleep 0.05; done) >/dev/null 2>&1 & "
        "sleep 300"
    )
    _, result = run(backend, handle, ["sh", "-c", script], timeout_s=1.5, last=last)
    assert result.timed_out
    assert result.exit_code == 124
    before = backend.read_file(handle, "beat")
    # The sandbox itself waits a while; nothing may write the heartbeat any more.
    run(backend, handle, ["sleep", "0.5"])
    assert backend.read_file(handle, "beat") == before


def test_output_flood_is_capped_with_a_marker(backend, last):
    handle = backend.create(SPEC)
    outputs, result = run(
        backend, handle, ["yes", "flood"], output_cap=64 * 1024, timeout_s=20, last=last
    )
    assert result.truncated
    assert len(text(outputs, "stdout")) == 64 * 1024
    assert "output truncated" in text(outputs, "stderr")
    assert text(outputs, "stdout").startswith("flood\nflood\n")


def test_a_sandbox_still_takes_commands_after_its_last_one(backend):
    """`last` is a promise the caller may break: the next command runs, on the same files."""
    handle = backend.create(SPEC)
    _, result = run(backend, handle, ["sh", "-c", "echo kept > note; exit 5"], last=True)
    assert result.exit_code == 5
    outputs, result = run(backend, handle, ["cat", "note"])
    assert (result.exit_code, text(outputs, "stdout")) == (0, "kept\n")
    backend.terminate(handle)
    assert handle.external_id not in {h.external_id for h in backend.list({})}


def test_files_round_trip_and_commands_see_them(backend):
    handle = backend.create(SPEC)
    backend.write_file(handle, "/workspace/src/app.py", b"print('hi')\n")
    outputs, _ = run(backend, handle, ["cat", "src/app.py"])
    assert text(outputs, "stdout") == "print('hi')\n"
    run(backend, handle, ["sh", "-c", "echo made-inside > out.txt"])
    assert backend.read_file(handle, "out.txt") == b"made-inside\n"
    with pytest.raises(SandboxError):
        backend.read_file(handle, "missing.txt")


def test_snapshot_then_fork_three_gives_independent_workspaces(backend):
    if Capability.SNAPSHOT not in backend.capabilities:
        pytest.fail("every backend in the suite declares snapshots")
    source = backend.create(SPEC)
    backend.write_file(handle=source, path="shared.txt", data=b"from the snapshot\n")
    snapshot = backend.snapshot(source)
    forks = backend.fork(snapshot, SPEC, 3)
    assert len({f.external_id for f in forks}) == 3
    for i, fork in enumerate(forks):
        run(backend, fork, ["sh", "-c", f"echo fork-{i} > mine.txt; echo changed-{i} > shared.txt"])
    for i, fork in enumerate(forks):
        outputs, _ = run(backend, fork, ["sh", "-c", "cat mine.txt shared.txt; ls"])
        listing = text(outputs, "stdout")
        assert listing.startswith(f"fork-{i}\nchanged-{i}\n")
        assert all(f"fork-{j}" not in listing for j in range(3) if j != i)
    assert backend.read_file(source, "shared.txt") == b"from the snapshot\n"
    with pytest.raises(SandboxError):
        backend.read_file(source, "mine.txt")


def test_spec_files_are_read_only_at_convoy_files_and_forks_get_them(backend):
    """Backends without Capability.READONLY_FILES (Modal: commands run as root) only set the
    mode bits; the local engines must refuse every write."""
    spec = SandboxSpec(timeout_s=120, memory_mb=256, files={"fix.py": b"print('fixed')\n"})
    source = backend.create(spec)
    enforced = Capability.READONLY_FILES in backend.capabilities

    def check(handle):
        outputs, result = run(backend, handle, ["sh", "-c", 'cat "$CONVOY_FILES/fix.py"'])
        assert (text(outputs, "stdout"), result.exit_code) == ("print('fixed')\n", 0)
        # find, not stat: gVisor's statx refuses coreutils' stat (see docs/architecture.md).
        find = 'find "$CONVOY_FILES/fix.py" -printf "%m\\n"'
        outputs, _ = run(backend, handle, ["sh", "-c", find])
        assert text(outputs, "stdout") == "444\n"
        if not enforced:
            return
        for script in ("echo changed > /convoy/files/fix.py", "echo new > /convoy/files/new.py",
                       "rm -f /convoy/files/fix.py", "chmod 666 /convoy/files/fix.py"):  # fmt: skip
            outputs, result = run(backend, handle, ["sh", "-c", script])
            assert result.exit_code != 0, script
            assert re.search("Read-only file system|Permission denied", text(outputs, "stderr"))
        outputs, _ = run(backend, handle, ["sh", "-c", "cat /convoy/files/*"])
        assert text(outputs, "stdout") == "print('fixed')\n"

    check(source)
    # Not in the workspace: no snapshot, checkout or diff ever holds them.
    outputs, _ = run(backend, source, ["sh", "-c", "ls -A; echo end"])
    assert text(outputs, "stdout") == "end\n"
    [fork] = backend.fork(backend.snapshot(source), spec, 1)
    check(fork)


def test_terminate_is_idempotent_and_frees_the_sandbox(backend):
    handle = backend.create(SPEC)
    backend.terminate(handle)
    backend.terminate(handle)
    assert handle.external_id not in {h.external_id for h in backend.list({})}


def test_list_finds_sandboxes_by_label(backend):
    mine = backend.create(SandboxSpec(timeout_s=60, labels={"convoy_run": "7"}))
    backend.create(SandboxSpec(timeout_s=60, labels={"convoy_run": "8"}))
    assert [h.external_id for h in backend.list({"convoy_run": "7"})] == [mine.external_id]


def test_checkpoint_restore_resumes_a_process_with_its_memory(backend):
    if Capability.CHECKPOINT not in backend.capabilities:
        with pytest.raises(SandboxError):
            backend.checkpoint(backend.create(SPEC))
        return
    handle = backend.create(SPEC)
    # The token lives only in the shell's memory; the counter proves the process keeps going.
    loop = (
        "token=mem-$(od -An -N4 -tx4 /dev/urandom | tr -d ' '); i=0; "
        'while :; do i=$((i+1)); echo "$token $i" > /tmp/s; mv /tmp/s /tmp/state; sleep 0.05; done'
    )
    run(backend, handle, ["sh", "-c", f"({loop}) >/dev/null 2>&1 &"])
    outputs, _ = run(backend, handle, ["sh", "-c", "sleep 0.3; cat /tmp/state"])
    token, count = text(outputs, "stdout").split()
    checkpoint = backend.checkpoint(handle)
    restored = [backend.restore(checkpoint, SPEC) for _ in range(2)]
    for fork in restored:
        outputs, _ = run(backend, fork, ["sh", "-c", "sleep 0.3; cat /tmp/state"])
        seen_token, seen_count = text(outputs, "stdout").split()
        assert seen_token == token
        assert int(seen_count) > int(count)
