"""The E2B backend against FakeE2B, a fake of the `e2b` SDK surface (E2B's cloud cannot be
reached from here); every test name says `e2b_fake`. The fake checks each call against the
real SDK's signatures, records it, and raises the real `e2b` exception classes.

The conformance suite runs here too (imported below, against this module's `backend`), except
its memory checkpoint case: the fake cannot keep a process's memory; the exact SDK calls of
checkpoint/restore are asserted instead.
"""

import time

import e2b.exceptions
import pytest

from sandboxes.backends.base import (
    Capability,
    ExecOutput,
    ExecResult,
    NetworkPolicy,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
)
from sandboxes.backends.cloud import CREATED_LABEL
from sandboxes.backends.e2b import E2BBackend
from tests.sandboxes.fake_e2b import e2b_fake_backend
from tests.sandboxes.test_conformance import (  # noqa: F401 — collected here against FakeE2B
    last,
    test_a_sandbox_still_takes_commands_after_its_last_one,
    test_exit_codes_are_results_not_errors,
    test_files_round_trip_and_commands_see_them,
    test_list_finds_sandboxes_by_label,
    test_output_flood_is_capped_with_a_marker,
    test_output_streams_in_order_with_stdout_and_stderr_apart,
    test_snapshot_then_fork_three_gives_independent_workspaces,
    test_spec_files_are_read_only_at_convoy_files_and_forks_get_them,
    test_terminate_is_idempotent_and_frees_the_sandbox,
    test_timeout_kills_a_tree_that_ignores_sigterm,
)

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def backend(tmp_path):
    with e2b_fake_backend(tmp_path / "e2b") as backend:
        yield backend


def run(backend, handle, argv, **kwargs):
    events = list(backend.exec(handle, argv, **kwargs))
    assert isinstance(events[-1], ExecResult)
    return events[:-1], events[-1]


def test_e2b_fake_capabilities_are_honest():
    caps = E2BBackend.capabilities
    assert Capability.SNAPSHOT in caps and Capability.CHECKPOINT in caps
    assert Capability.NETWORK_ALLOWLIST in caps and Capability.PAUSE in caps
    assert Capability.GPU not in caps
    assert Capability.FORK not in caps  # E2B forks live sandboxes, not snapshots
    assert Capability.READONLY_FILES not in caps


def test_e2b_fake_create_builds_a_template_once_and_passes_the_spec(backend):
    spec = SandboxSpec(
        image="python:3.12-slim",
        cpu=1.5,
        memory_mb=1023,
        timeout_s=48 * 3600,
        env={"CI": "1"},
        labels={"convoy_run": "17", "convoy_install": "i1"},
    )
    handle = backend.create(spec)
    backend.create(spec)

    [built] = backend.fake.called("Template.build")
    assert built["template"] == {"from_image": "python:3.12-slim"}
    assert (built["cpu_count"], built["memory_mb"]) == (2, 1024)  # E2B: whole CPUs, even MiB
    assert built["name"].startswith("convoy-")
    assert len(backend.fake.called("Template.exists")) == 1  # then known to this worker
    first, second = backend.fake.called("Sandbox.create")
    assert abs(float(first["metadata"].pop(CREATED_LABEL)) - time.time()) < 60
    assert first == {
        "template": built["name"],
        "timeout": 24 * 3600,  # E2B's maximum, not the 48 h asked for
        "metadata": {"convoy_run": "17", "convoy_install": "i1"},
        "envs": {"CI": "1"},
        "allow_internet_access": False,  # network: none by default
        "api_key": "e2b_fake_key",
    }
    assert second["template"] == built["name"]
    # The workspace is made as root; commands then run there.
    prepare = backend.fake.called("commands.run")[0]
    assert (prepare["cmd"], prepare["user"]) == ("mkdir -p /workspace", "root")
    assert handle.labels == {"convoy_run": "17", "convoy_install": "i1"}


def test_e2b_fake_a_configured_template_is_used_as_is(tmp_path):
    with e2b_fake_backend(tmp_path / "e2b", templates={"debian:bookworm-slim": "base"}) as b:
        b.create(SandboxSpec())
        assert b.fake.called("Template.build") == []
        assert b.fake.called("Sandbox.create")[0]["template"] == "base"


def test_e2b_fake_network_policy_maps_to_e2b(backend):
    backend.create(SandboxSpec(network=NetworkPolicy.OPEN))
    backend.create(
        SandboxSpec(
            network=NetworkPolicy.ALLOWLIST,
            allowed_domains=["pkgs.example.com", "*.example.org", "api.example.com:443"],
        )
    )
    backend.create(SandboxSpec(network=NetworkPolicy.ALLOWLIST, allowed_domains=[]))
    open_, allow, empty = backend.fake.called("Sandbox.create")
    assert open_["allow_internet_access"] is True and "network" not in open_
    assert allow["network"] == {
        "deny_out": ["0.0.0.0/0"],
        "allow_out": ["*.example.org", "api.example.com", "pkgs.example.com"],
    }
    assert "allow_internet_access" not in allow
    assert empty["allow_internet_access"] is False


def test_e2b_fake_refuses_an_allowlist_it_cannot_enforce_before_any_call(backend):
    spec = SandboxSpec(network=NetworkPolicy.ALLOWLIST, allowed_domains=["git.example.com:22"])
    with pytest.raises(SandboxError, match="e2b cannot enforce the allowlist entry") as info:
        backend.create(spec)
    assert "git.example.com:22" in str(info.value) and "network: none" in str(info.value)
    assert not info.value.transient
    assert backend.fake.calls == []


def test_e2b_fake_refuses_a_gpu_naming_the_backends_that_have_one(backend):
    with pytest.raises(SandboxError, match=r"e2b backend offers no GPUs.*modal or daytona"):
        backend.create(SandboxSpec(gpu="A10G:2"))
    assert backend.fake.calls == []


def test_e2b_fake_exec_runs_wrapped_in_the_background_and_streams(backend):
    handle = backend.create(SandboxSpec())
    backend.write_file(handle, "sub/.keep", b"")
    events, result = run(
        backend, handle, ["sh", "-c", "echo out; echo err >&2; exit 3"], env={"A": "1"}, cwd="sub"
    )
    call = backend.fake.called("commands.run")[-1]
    assert call["background"] is True and call["retain_output"] is False
    assert call["cwd"] == "/workspace/sub" and call["envs"] == {"A": "1"}
    assert call["user"] == "root" and call["timeout"] == 0  # our deadline, not E2B's
    assert call["cmd"].startswith("sh -c ") and call["cmd"].endswith(
        "'echo out; echo err >&2; exit 3'"
    )
    # Two streams: each arrives whole and in order; how they interleave is not promised.
    assert sorted((e.stream, e.data) for e in events) == [
        ("stderr", b"err\n"),
        ("stdout", b"out\n"),
    ]
    # E2B raised CommandExitException for the exit code 3: a result here, not an error.
    assert (result.exit_code, result.timed_out) == (3, False)


def test_e2b_fake_exec_deadline_becomes_e2bs_backstop_plus_a_kill(backend):
    handle = backend.create(SandboxSpec())
    _, result = run(backend, handle, ["sleep", "30"], timeout_s=0.5)
    assert result.timed_out and result.exit_code == 124
    runs = backend.fake.called("commands.run")
    assert runs[-2]["timeout"] == 1 + 60
    assert "kill -STOP" in runs[-1]["cmd"]  # the process tree is stopped, then killed


def test_e2b_fake_files_go_through_files_write_and_read(backend):
    handle = backend.create(SandboxSpec(files={"fix.py": b"x"}))
    backend.write_file(handle, "a/b.txt", b"hello", mode=0o755)
    assert backend.read_file(handle, "a/b.txt") == b"hello"
    writes = backend.fake.called("files.write")
    assert [w["path"] for w in writes] == ["/convoy/files/fix.py", "/workspace/a/b.txt"]
    assert {w["user"] for w in writes} == {"root"}
    assert backend.fake.called("files.read")[-1] == {
        "path": "/workspace/a/b.txt", "format": "bytes", "user": "root"
    }  # fmt: skip
    assert any(
        c["cmd"] == "chmod 755 /workspace/a/b.txt" for c in backend.fake.called("commands.run")
    )
    with pytest.raises(SandboxError, match="not found"):
        backend.read_file(handle, "missing")


def test_e2b_fake_snapshot_fork_and_delete_use_e2b_snapshots(backend):
    source = backend.create(SandboxSpec(labels={"convoy_variant": "1"}))
    backend.write_file(source, "seed.txt", b"seed")
    snapshot = backend.snapshot(source)
    assert backend.fake.called("Sandbox.create_snapshot") == [
        {"sandbox_id": source.external_id, "api_key": "e2b_fake_key"}
    ]
    forks = backend.fork(snapshot, SandboxSpec(labels={"convoy_variant": "2"}), 3)
    creates = backend.fake.called("Sandbox.create")[1:]
    assert [c["template"] for c in creates] == [snapshot.external_id] * 3
    assert all(c["metadata"]["convoy_variant"] == "2" for c in creates)
    assert all(backend.read_file(f, "seed.txt") == b"seed" for f in forks)
    backend.delete_snapshot(snapshot)
    assert backend.fake.called("Sandbox.delete_snapshot")[0]["snapshot_id"] == snapshot.external_id


def test_e2b_fake_failed_fork_leaves_no_sandbox_behind(backend):
    source = backend.create(SandboxSpec())
    snapshot = backend.snapshot(source)
    backend.fake.fail_next("Sandbox.create", e2b.exceptions.SandboxException("no capacity"))
    with pytest.raises(SandboxError, match="no capacity"):
        backend.fork(snapshot, SandboxSpec(), 3)
    assert [sb.sandbox_id for sb in backend.fake.running()] == [source.external_id]


def test_e2b_fake_checkpoint_and_restore_are_e2b_memory_snapshots(backend):
    handle = backend.create(SandboxSpec())
    checkpoint = backend.checkpoint(handle)
    restored = backend.restore(checkpoint, SandboxSpec(labels={"convoy_run": "3"}))
    assert backend.fake.called("Sandbox.create_snapshot")[0]["sandbox_id"] == handle.external_id
    last_create = backend.fake.called("Sandbox.create")[-1]
    assert (last_create["template"], last_create["metadata"]["convoy_run"]) == (
        checkpoint.external_id, "3"
    )  # fmt: skip
    assert restored.external_id != handle.external_id


def test_e2b_fake_pause_and_resume(backend):
    handle = backend.create(SandboxSpec())
    backend.pause(handle)
    assert backend.fake.sandboxes[handle.external_id].state == "paused"
    # Paused sandboxes are still listed: the reaper kills them too.
    assert [h.external_id for h in backend.list({})] == [handle.external_id]
    backend.resume(handle)
    assert backend.fake.called("Sandbox.connect")[-1]["sandbox_id"] == handle.external_id
    assert backend.fake.sandboxes[handle.external_id].state == "running"


def test_e2b_fake_crash_between_create_and_teardown_is_reaped_by_labels(backend):
    """A worker dies after create: another worker's reaper path (list by Convoy's labels, then
    terminate what no live record names) kills it, as sandboxes_orphans_terminate does."""
    labels = {"convoy_install": "i1", "convoy_run": "9"}
    kept = backend.create(SandboxSpec(labels={**labels, "convoy_variant": "1"}))
    backend.create(SandboxSpec(labels={**labels, "convoy_variant": "2"}))  # the crash's orphan
    backend.create(SandboxSpec(labels={"convoy_install": "other"}))
    reaper = E2BBackend(sdk=backend.fake, api_key="e2b_fake_key")  # another worker
    live = {kept.external_id}
    for handle in reaper.list({"convoy_install": "i1"}):
        if handle.external_id not in live:
            reaper.terminate(handle)
    assert backend.fake.called("Sandbox.list")[-1]["query"].metadata == {"convoy_install": "i1"}
    [killed] = backend.fake.called("Sandbox.kill")
    assert killed["sandbox_id"] != kept.external_id
    assert {h.external_id for h in reaper.list({"convoy_install": "i1"})} == live


def test_e2b_fake_terminate_is_a_kill_by_id_and_idempotent(backend):
    handle = backend.create(SandboxSpec())
    backend.terminate(handle)
    backend.terminate(handle)
    backend.terminate(SandboxHandle(backend="e2b", external_id="never-existed"))
    assert [c["sandbox_id"] for c in backend.fake.called("Sandbox.kill")][:2] == [
        handle.external_id
    ] * 2
    with pytest.raises(SandboxError, match=r"finished|not found"):
        list(backend.exec(handle, ["true"]))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (e2b.exceptions.RateLimitException("429"), True),
        (e2b.exceptions.TimeoutException("slow"), True),
        (e2b.exceptions.AuthenticationException("bad key"), False),
        (e2b.exceptions.InvalidArgumentException("bad"), False),
    ],
    ids=lambda e: type(e).__name__ if isinstance(e, Exception) else str(e),
)
def test_e2b_fake_errors_are_sandbox_errors_marked_transient_when_retrying_helps(
    backend, error, transient
):
    backend.fake.fail_next("Sandbox.create", error)
    with pytest.raises(SandboxError) as info:
        backend.create(SandboxSpec())
    assert info.value.transient is transient
    if isinstance(error, e2b.exceptions.AuthenticationException):
        assert "E2B_API_KEY" in str(info.value)


def test_e2b_without_a_key_refuses_before_any_call(tmp_path, monkeypatch):
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    with e2b_fake_backend(tmp_path / "e2b") as backend:
        bare = E2BBackend(sdk=backend.fake, api_key="")
        with pytest.raises(SandboxError, match="E2B is not configured: set E2B_API_KEY"):
            bare.create(SandboxSpec())
        assert backend.fake.calls == []


def test_e2b_fake_exec_output_is_bytes_events(backend):
    handle = backend.create(SandboxSpec())
    events, _ = run(backend, handle, ["printf", "%s|", "a b", "$HOME"])
    assert all(isinstance(e, ExecOutput) for e in events)
    assert b"".join(e.data for e in events) == b"a b|$HOME|"
