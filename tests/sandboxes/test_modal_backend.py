"""The Modal backend against FakeModal, a fake of the `modal` SDK surface (Modal's cloud cannot
be reached from here); every test name says `modal_fake`. The fake checks each call against
the real SDK's signatures and raises the real `modal.exception` classes.
"""

import time

import modal.exception
import pytest

from sandboxes.backends.base import (
    Capability,
    ExecOutput,
    ExecResult,
    NetworkPolicy,
    SandboxError,
    SandboxSpec,
)
from sandboxes.backends.cloud import CREATED_LABEL
from sandboxes.backends.modal import ModalBackend, truncation_marker
from sandboxes.pacing import TokenBucket
from tests.sandboxes.fake_modal import modal_fake_backend

pytestmark = pytest.mark.shapes("embedded", "production")


class FakeClock:
    """Time that moves only when someone sleeps."""

    def __init__(self, *, advance: bool = True) -> None:
        self.now = 0.0
        self.advance = advance
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.advance:
            self.now += seconds


@pytest.fixture
def backend(tmp_path):
    with modal_fake_backend(tmp_path / "modal") as backend:
        yield backend


def another_worker(backend) -> ModalBackend:
    """A second backend instance on the same (fake) Modal account, as in another worker."""
    return ModalBackend(sdk=backend.fake, app_name="convoy-test", create_bucket=TokenBucket(rate=9))


def run(backend, handle, argv, **kwargs):
    events = list(backend.exec(handle, argv, **kwargs))
    assert isinstance(events[-1], ExecResult)
    assert all(isinstance(e, ExecOutput) for e in events[:-1])
    return events[:-1], events[-1]


def test_modal_fake_create_passes_the_spec_to_modal(backend):
    spec = SandboxSpec(
        image="python:3.12-slim",
        cpu=2.0,
        memory_mb=4096,
        gpu="T4",
        timeout_s=48 * 3600,
        idle_timeout_s=600,
        env={"CI": "1"},
        labels={"convoy_run": "17"},
    )
    handle = backend.create(spec)

    [call] = backend.fake.create_calls
    assert call["image"].tag == "python:3.12-slim"
    assert (call["cpu"], call["memory"], call["gpu"]) == (2.0, 4096, "T4")
    assert call["timeout"] == 24 * 3600  # Modal's maximum, not the 48 h asked for
    assert call["idle_timeout"] == 600
    assert call["workdir"] == "/workspace"
    assert call["env"] == {"CI": "1"}
    assert abs(float(call["tags"].pop(CREATED_LABEL)) - time.time()) < 60
    assert call["tags"] == {"convoy_run": "17"}
    assert call["app"].name == "convoy-test"
    assert handle.backend == "modal"
    assert handle.external_id.startswith("sb-")
    assert handle.labels == {"convoy_run": "17"}


def test_modal_fake_network_policy_becomes_block_network_or_allowlist(backend):
    backend.create(SandboxSpec(network=NetworkPolicy.NONE))
    backend.create(SandboxSpec(network=NetworkPolicy.ALLOWLIST, allowed_domains=["example.org"]))
    backend.create(SandboxSpec(network=NetworkPolicy.OPEN))
    none, allow, open_ = backend.fake.create_calls
    assert none["block_network"] is True
    assert "outbound_domain_allowlist" not in none
    assert allow.get("block_network", False) is False
    assert allow["outbound_domain_allowlist"] == ["example.org"]
    assert open_.get("block_network", False) is False
    assert "outbound_domain_allowlist" not in open_


def test_modal_fake_blocked_network_cannot_reach_a_local_server(backend):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        handle = backend.create(SandboxSpec(network=NetworkPolicy.NONE))
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
        _, result = run(backend, handle, ["python3", "-c", probe])
        assert result.exit_code != 0
        # The same probe connects when the policy is open: the refusal above is the policy.
        handle = backend.create(SandboxSpec(network=NetworkPolicy.OPEN))
        _, result = run(backend, handle, ["python3", "-c", probe])
        assert result.exit_code == 0
    finally:
        server.close()


def test_modal_fake_exec_streams_output_in_order_with_streams_apart(backend):
    handle = backend.create(SandboxSpec())
    script = "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; sleep 0.2; echo err2 >&2"
    events, result = run(backend, handle, ["sh", "-c", script])
    assert [(e.stream, e.data) for e in events] == [
        ("stdout", b"out1\n"),
        ("stderr", b"err1\n"),
        ("stdout", b"out2\n"),
        ("stderr", b"err2\n"),
    ]
    assert result.exit_code == 0
    assert not result.timed_out
    assert not result.truncated
    assert result.bytes_out == 20
    # Commands run through `sh` (see EXEC_WRAPPER); the argv reaches the command unchanged.
    events, _ = run(backend, handle, ["printf", "%s|", "a b", "$HOME", "'q'"])
    assert b"".join(e.data for e in events) == b"a b|$HOME|'q'|"


def test_modal_fake_exit_codes_propagate_and_signals_are_128_plus(backend):
    handle = backend.create(SandboxSpec())
    _, result = run(backend, handle, ["sh", "-c", "exit 3"])
    assert (result.exit_code, result.timed_out) == (3, False)
    _, result = run(backend, handle, ["sh", "-c", "kill -TERM $$"])
    assert result.exit_code == 128 + 15


def test_modal_fake_exec_env_and_cwd_reach_the_command(backend):
    handle = backend.create(SandboxSpec(env={"CI": "1"}))
    backend.write_file(handle, "sub/marker.txt", b"here")
    events, result = run(
        backend,
        handle,
        ["sh", "-c", "echo $GREETING-$CI; cat marker.txt"],
        cwd="sub",
        env={"GREETING": "hi"},
    )
    assert b"".join(e.data for e in events) == b"hi-1\nhere"
    assert result.exit_code == 0


def test_modal_fake_timeout_is_reported_as_timed_out(backend):
    handle = backend.create(SandboxSpec())
    # A process tree that ignores SIGTERM; Modal's exec deadline makes wait() return -1.
    script = "trap '' TERM; (trap '' TERM; sleep 60) & echo started; wait"
    events, result = run(backend, handle, ["sh", "-c", script], timeout_s=0.5)
    assert [e.data for e in events] == [b"started\n"]
    assert result.timed_out
    assert result.exit_code == 124  # as on every backend, whatever Modal's -1 said
    assert backend.fake.sandboxes[handle.external_id]._processes[-1].wait() == -1


def test_modal_fake_output_flood_is_capped_with_a_marker_and_stopped(backend):
    handle = backend.create(SandboxSpec())
    cap = 100_000
    events, result = run(backend, handle, ["yes", "flood"], output_cap=cap, timeout_s=120)
    assert result.truncated
    assert not result.timed_out  # stopped by the backend, not by the deadline
    assert result.exit_code == 128 + 9
    assert events[-1] == ExecOutput("stderr", truncation_marker(cap))
    assert sum(len(e.data) for e in events[:-1]) == result.bytes_out == cap
    assert backend.fake.sandboxes[handle.external_id]._processes[0].poll() == 128 + 9
    # The command ran through the wrapper, so the flood stopper found it by its pid file.
    assert list(backend.fake.sandboxes[handle.external_id].tmp.glob(".convoy-exec/*")) == []


def test_modal_fake_files_round_trip_with_mode(backend):
    handle = backend.create(SandboxSpec())
    backend.write_file(handle, "bin/tool.sh", b"#!/bin/sh\necho tool ran\n", mode=0o755)
    backend.write_file(handle, "/workspace/notes.txt", b"absolute path")
    events, result = run(backend, handle, ["./bin/tool.sh"])
    assert b"".join(e.data for e in events) == b"tool ran\n"
    assert result.exit_code == 0
    assert backend.read_file(handle, "notes.txt") == b"absolute path"
    with pytest.raises(SandboxError, match=r"missing\.txt"):
        backend.read_file(handle, "missing.txt")


def test_modal_fake_snapshot_then_fork_three_independent_workspaces(backend):
    source = backend.create(SandboxSpec(labels={"convoy_variant": "1"}))
    backend.write_file(source, "shared.txt", b"from the snapshot")
    snapshot = backend.snapshot(source)
    assert snapshot.external_id.startswith("im-")
    assert backend.fake.snapshot_calls[0]["ttl"] is None  # kept until we delete it

    forks = backend.fork(snapshot, SandboxSpec(labels={"convoy_variant": "2"}), 3)
    assert len({f.external_id for f in forks}) == 3
    assert source.external_id not in {f.external_id for f in forks}
    for n, fork in enumerate(forks):
        assert backend.read_file(fork, "shared.txt") == b"from the snapshot"
        run(backend, fork, ["sh", "-c", f"echo fork{n} > own.txt; echo changed > shared.txt"])
    for n, fork in enumerate(forks):
        assert backend.read_file(fork, "own.txt") == f"fork{n}\n".encode()
        events, _ = run(backend, fork, ["ls"])
        assert b"".join(e.data for e in events).split() == [b"own.txt", b"shared.txt"]
    assert backend.read_file(source, "shared.txt") == b"from the snapshot"
    # A new backend instance (another worker) finds the snapshot by its id alone.
    other = ModalBackend(
        sdk=backend.fake, app_name="convoy-test", create_bucket=TokenBucket(rate=9)
    )
    late = other.create_from_snapshot(snapshot, SandboxSpec())
    assert other.read_file(late, "shared.txt") == b"from the snapshot"


def test_modal_fake_failed_fork_leaves_no_sandbox_behind(backend):
    source = backend.create(SandboxSpec())
    snapshot = backend.snapshot(source)
    backend.fake.fail_next("create", modal.exception.InvalidError("bad gpu"))
    with pytest.raises(SandboxError, match="bad gpu"):
        backend.fork(snapshot, SandboxSpec(), 3)
    assert [sb.object_id for sb in backend.fake.running()] == [source.external_id]


def test_modal_fake_list_by_labels_finds_orphans_to_reap(backend):
    a = backend.create(SandboxSpec(labels={"convoy": "yes", "convoy_run": "1"}))
    b = backend.create(SandboxSpec(labels={"convoy": "yes", "convoy_run": "2"}))
    backend.create(SandboxSpec(labels={"other": "x"}))

    found = backend.list({"convoy": "yes"})
    assert {h.external_id for h in found} == {a.external_id, b.external_id}
    assert {h.labels["convoy_run"] for h in found} == {"1", "2"}
    assert [h.external_id for h in backend.list({"convoy_run": "2"})] == [b.external_id]

    backend.terminate(a)
    assert [h.external_id for h in backend.list({"convoy": "yes"})] == [b.external_id]


def test_modal_fake_attach_by_id_from_another_worker(backend):
    handle = backend.create(SandboxSpec(labels={"convoy_run": "5"}))
    backend.write_file(handle, "f.txt", b"kept")
    other = ModalBackend(
        sdk=backend.fake, app_name="convoy-test", create_bucket=TokenBucket(rate=9)
    )
    attached = other.attach(handle.external_id)
    assert attached.labels["convoy_run"] == "5"
    assert other.read_file(attached, "f.txt") == b"kept"
    with pytest.raises(SandboxError, match="not found"):
        other.attach("sb-doesnotexist")
    backend.terminate(handle)
    with pytest.raises(SandboxError, match="finished"):
        other.attach(handle.external_id)


def test_modal_fake_terminate_is_idempotent_and_stops_commands(backend):
    handle = backend.create(SandboxSpec())
    backend.fake.sandboxes[handle.external_id].exec("sleep", "60")
    backend.terminate(handle)
    backend.terminate(handle)
    assert backend.fake.running() == []
    assert backend.fake.sandboxes[handle.external_id]._processes[0].wait() == 128 + 9
    assert handle.external_id in backend.fake.detached
    with pytest.raises(SandboxError):
        list(backend.exec(handle, ["true"]))
    # A sandbox that Modal no longer knows is already terminated, not an error.
    from sandboxes.backends.base import SandboxHandle

    backend.terminate(SandboxHandle(backend="modal", external_id="sb-gone"))


@pytest.mark.parametrize(
    "error",
    [
        modal.exception.ResourceExhaustedError("rate limit exceeded"),
        modal.exception.ServiceError("unavailable"),
        modal.exception.ConnectionError("connection reset"),
        modal.exception.InternalError("internal"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_modal_fake_transient_errors_are_marked_transient(backend, error):
    backend.fake.fail_next("create", error)
    with pytest.raises(SandboxError) as info:
        backend.create(SandboxSpec())
    assert info.value.transient
    assert str(error) in str(info.value)
    backend.create(SandboxSpec())  # the retry a task would make succeeds


def test_modal_fake_permanent_errors_are_not_transient(backend):
    backend.fake.fail_next("create", modal.exception.InvalidError("Invalid tag key"))
    with pytest.raises(SandboxError) as info:
        backend.create(SandboxSpec())
    assert not info.value.transient
    backend.fake.fail_next("create", modal.exception.AuthError("token missing"))
    with pytest.raises(SandboxError, match="MODAL_TOKEN_ID") as info:
        backend.create(SandboxSpec())
    assert not info.value.transient
    handle = backend.create(SandboxSpec())
    backend.fake.fail_next("exec", modal.exception.ServiceError("unavailable"))
    with pytest.raises(SandboxError) as info:
        list(backend.exec(handle, ["true"]))
    assert info.value.transient
    # A stream that breaks mid-command fails the exec (transiently) once both streams end.
    backend.fake.fail_next("stream", modal.exception.ConnectionError("stream reset"))
    with pytest.raises(SandboxError, match="stream reset") as info:
        list(backend.exec(handle, ["echo", "lost"]))
    assert info.value.transient


def test_modal_fake_creates_are_paced_by_the_token_bucket(tmp_path):
    clock = FakeClock()
    bucket = TokenBucket(rate=2, clock=clock, sleep=clock.sleep)
    with modal_fake_backend(tmp_path / "modal", create_bucket=bucket) as backend:
        backend.fake.clock = clock
        for _ in range(6):
            backend.create(SandboxSpec())
        created_at = [call["at"] for call in backend.fake.create_calls]
    # Two at once (the burst), then one every half second.
    assert created_at == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]


def test_modal_fake_fork_creates_share_the_pace(tmp_path):
    # Forks create from several threads; a frozen clock makes each one's wait exact.
    clock = FakeClock(advance=False)
    bucket = TokenBucket(rate=1, burst=1, clock=clock, sleep=clock.sleep)
    with modal_fake_backend(tmp_path / "modal", create_bucket=bucket) as backend:
        backend.fake.clock = clock
        source = backend.create(SandboxSpec())
        forks = backend.fork(backend.snapshot(source), SandboxSpec(), 3)
        assert len(forks) == 3
    # The source took the only token; the three forks queue behind it, one a second.
    assert sorted(clock.sleeps) == [1.0, 2.0, 3.0]


def test_modal_fake_backend_capabilities():
    caps = ModalBackend.capabilities
    assert Capability.SNAPSHOT in caps and Capability.STREAMED_EXEC in caps
    assert Capability.CHECKPOINT not in caps


def test_modal_sdk_without_credentials_refuses_clearly():
    """The real `modal` SDK (no fake), with no credentials: refused before any cloud call."""
    from tests.sandboxes.test_modal_live import modal_credentials

    if modal_credentials():
        pytest.skip("NOT RUN: Modal credentials are present; test_modal_live covers this path")
    with pytest.raises(SandboxError, match="MODAL_TOKEN_ID") as info:
        ModalBackend().create(SandboxSpec())
    assert not info.value.transient
