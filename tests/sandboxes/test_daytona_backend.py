"""The Daytona backend against FakeDaytona, a fake of the `daytona` SDK surface (Daytona's cloud
cannot be reached from here); every test name says `daytona_fake`. The fake checks each call
against the real SDK's signatures, records it, takes the real parameter classes and raises
the real `daytona` exceptions. The conformance suite runs here too (imported below).
"""

import time

import daytona
import pytest

from sandboxes.backends.base import (
    Capability,
    ExecResult,
    NetworkPolicy,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
)
from sandboxes.backends.cloud import CREATED_LABEL
from sandboxes.backends.daytona import DaytonaBackend
from tests.sandboxes.fake_daytona import daytona_fake_backend
from tests.sandboxes.test_conformance import (  # noqa: F401 — collected here against FakeDaytona
    last,
    test_a_sandbox_still_takes_commands_after_its_last_one,
    test_checkpoint_restore_resumes_a_process_with_its_memory,
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
    with daytona_fake_backend(tmp_path / "daytona") as backend:
        yield backend


def run(backend, handle, argv, **kwargs):
    events = list(backend.exec(handle, argv, **kwargs))
    assert isinstance(events[-1], ExecResult)
    return events[:-1], events[-1]


def test_daytona_fake_capabilities_are_honest():
    caps = DaytonaBackend.capabilities
    assert Capability.SNAPSHOT in caps and Capability.GPU in caps
    assert Capability.NETWORK_ALLOWLIST in caps
    assert Capability.CHECKPOINT not in caps  # Daytona snapshots keep files, not memory
    assert Capability.FORK not in caps  # Daytona forks live sandboxes, not snapshots
    assert Capability.READONLY_FILES not in caps


def test_daytona_fake_create_passes_the_spec_as_sdk_params(backend):
    spec = SandboxSpec(
        image="python:3.12-slim",
        cpu=1.5,
        memory_mb=1536,
        disk_mb=4096,
        gpu="H100:2",
        timeout_s=3601,
        idle_timeout_s=600,
        env={"CI": "1"},
        labels={"convoy_run": "17", "convoy_install": "i1"},
    )
    handle = backend.create(spec)
    [config] = [c.config for c in backend.fake.clients]
    assert config.api_key == "dtn_fake_key"
    [call] = backend.fake.called("Daytona.create")
    params = call["params"]
    assert isinstance(params, daytona.CreateSandboxFromImageParams)
    assert params.image == "python:3.12-slim"
    resources = params.resources
    assert (resources.cpu, resources.memory, resources.disk) == (2, 2, 4)  # whole CPUs, GiB
    assert (resources.gpu, resources.gpu_type) == (2, daytona.GpuType.H100)
    assert abs(float(params.labels.pop(CREATED_LABEL)) - time.time()) < 60
    assert params.labels == {"convoy_run": "17", "convoy_install": "i1"}
    assert params.env_vars == {"CI": "1"}
    assert (params.ttl_minutes, params.auto_stop_interval) == (61, 10)
    assert params.ephemeral is True and params.auto_delete_interval == 0
    assert params.network_block_all is True  # network: none by default
    assert call["timeout"] == 600  # a first create builds Daytona's snapshot of the image
    assert handle.labels == {"convoy_run": "17", "convoy_install": "i1"}
    # No idle limit: Daytona's 15-minute auto-stop is turned off (the TTL bounds the life).
    backend.create(SandboxSpec())
    assert backend.fake.called("Daytona.create")[-1]["params"].auto_stop_interval == 0


def test_daytona_fake_network_policy_maps_to_daytona(backend):
    backend.create(SandboxSpec(network=NetworkPolicy.OPEN))
    backend.create(
        SandboxSpec(
            network=NetworkPolicy.ALLOWLIST,
            allowed_domains=["pkgs.example.com", "*.example.org", "10.1.0.0/16", "1.2.3.4"],
        )
    )
    open_, allow = (c["params"] for c in backend.fake.called("Daytona.create"))
    assert not open_.network_block_all and open_.domain_allow_list is None
    assert allow.domain_allow_list == "*.example.org,pkgs.example.com"
    assert allow.network_allow_list == "1.2.3.4/32,10.1.0.0/16"
    assert not allow.network_block_all


@pytest.mark.parametrize(
    ("entry", "reason"),
    [("git.example.com:22", "has no ports"), ("2001:db8::/32", "IPv4 ranges only")],
)
def test_daytona_fake_refuses_an_allowlist_it_cannot_enforce(backend, entry, reason):
    spec = SandboxSpec(network=NetworkPolicy.ALLOWLIST, allowed_domains=[entry])
    with pytest.raises(SandboxError, match="daytona cannot enforce the allowlist entry") as info:
        backend.create(spec)
    assert reason in str(info.value) and "network: none" in str(info.value)
    assert backend.fake.called("Daytona.create") == []


def test_daytona_fake_refuses_a_gpu_it_does_not_offer_naming_what_it_does(backend):
    with pytest.raises(SandboxError, match=r"daytona offers .*H100.*not T4.*modal") as info:
        backend.create(SandboxSpec(gpu="T4"))
    assert not info.value.transient
    with pytest.raises(SandboxError, match="not a GPU type"):
        backend.create(SandboxSpec(gpu="H100:lots"))
    assert backend.fake.called("Daytona.create") == []


def test_daytona_fake_exec_streams_through_a_session(backend):
    handle = backend.create(SandboxSpec())
    backend.write_file(handle, "sub/.keep", b"")
    secret = "s3cr3t 'value'"
    events, result = run(
        backend,
        handle,
        ["sh", "-c", 'echo "out $A|$B"; echo err >&2; exit 3'],
        cwd="sub",
        env={"A": "1 2", "B": secret},
    )
    [session] = backend.fake.called("process.create_session")
    [call] = backend.fake.called("process.execute_session_command")
    assert call["session_id"] == session["session_id"]
    assert call["req"].run_async is True
    # The environment (a secret among it) never rides in the line Daytona keeps: it goes in a
    # file the line reads and removes.
    assert "1 2" not in call["req"].command and "s3cr3t" not in call["req"].command
    assert "cd /workspace/sub && exec sh -c " in call["req"].command
    uploads = [c["remote_path"] for c in backend.fake.called("fs.upload_file")]
    assert [p for p in uploads if p.startswith("/tmp/.convoy-env-")]
    [logs] = backend.fake.called("process.get_session_command_logs_async")
    assert logs["session_id"] == session["session_id"]
    assert backend.fake.called("process.delete_session") == [session]
    # Two streams: each arrives whole and in order; how they interleave is not promised.
    assert sorted((e.stream, e.data) for e in events) == [
        ("stderr", b"err\n"),
        ("stdout", f"out 1 2|{secret}\n".encode()),
    ]
    assert (result.exit_code, result.timed_out) == (3, False)
    listing, _ = run(backend, handle, ["ls", "-a", "/tmp"])  # the file went before the command
    assert b"convoy-env" not in b"".join(e.data for e in listing)


def test_daytona_fake_exec_deadline_kills_the_tree(backend):
    handle = backend.create(SandboxSpec())
    _, result = run(backend, handle, ["sleep", "30"], timeout_s=0.5)
    assert result.timed_out and result.exit_code == 124
    assert "kill -STOP" in backend.fake.called("process.exec")[-1]["command"]


def test_daytona_fake_files_go_through_fs_upload_and_download(backend):
    handle = backend.create(SandboxSpec(files={"fix.py": b"x"}))
    backend.write_file(handle, "a.txt", b"hello")
    assert backend.read_file(handle, "a.txt") == b"hello"
    uploads = [c["remote_path"] for c in backend.fake.called("fs.upload_file")]
    assert uploads == ["/convoy/files/fix.py", "/workspace/a.txt"]
    assert backend.fake.called("fs.download_file") == [{"remote_path": "/workspace/a.txt"}]
    with pytest.raises(SandboxError, match="not found"):
        backend.read_file(handle, "missing")


def test_daytona_fake_snapshot_fork_and_delete_use_named_snapshots(backend):
    source = backend.create(SandboxSpec(gpu="H100"))
    backend.write_file(source, "seed.txt", b"seed")
    snapshot = backend.snapshot(source)
    [snap] = backend.fake.called("Sandbox.create_snapshot")
    assert snap["sandbox_id"] == source.external_id and snap["name"] == snapshot.external_id
    assert snap["timeout"] == 600
    forks = backend.fork(snapshot, SandboxSpec(labels={"convoy_variant": "2"}), 3)
    creates = [c["params"] for c in backend.fake.called("Daytona.create")[1:]]
    assert all(isinstance(p, daytona.CreateSandboxFromSnapshotParams) for p in creates)
    assert [p.snapshot for p in creates] == [snapshot.external_id] * 3
    assert all(p.labels["convoy_variant"] == "2" for p in creates)
    assert all(backend.read_file(f, "seed.txt") == b"seed" for f in forks)
    backend.delete_snapshot(snapshot)
    backend.delete_snapshot(snapshot)  # already gone: no error
    assert [c["snapshot"] for c in backend.fake.called("snapshot.delete")] == [
        snapshot.external_id
    ] * 2


def test_daytona_fake_failed_fork_leaves_no_sandbox_behind(backend):
    source = backend.create(SandboxSpec())
    snapshot = backend.snapshot(source)
    backend.fake.fail_next("Daytona.create", daytona.DaytonaError("no runner", status_code=400))
    with pytest.raises(SandboxError, match="no runner"):
        backend.fork(snapshot, SandboxSpec(), 3)
    assert [sb.id for sb in backend.fake.running()] == [source.external_id]


def test_daytona_fake_crash_between_create_and_teardown_is_reaped_by_labels(backend):
    """A worker dies after create: another worker's reaper path (list by Convoy's labels, then
    terminate what no live record names) deletes it, as sandboxes_orphans_terminate does."""
    labels = {"convoy_install": "i1", "convoy_run": "9"}
    kept = backend.create(SandboxSpec(labels={**labels, "convoy_variant": "1"}))
    orphan = backend.create(SandboxSpec(labels={**labels, "convoy_variant": "2"}))
    backend.create(SandboxSpec(labels={"convoy_install": "other"}))
    reaper = DaytonaBackend(sdk=backend.fake, api_key="dtn_fake_key")  # another worker
    live = {kept.external_id}
    for handle in reaper.list({"convoy_install": "i1"}):
        if handle.external_id not in live:
            reaper.terminate(handle)
    assert backend.fake.called("Daytona.list")[-1]["query"].labels == {"convoy_install": "i1"}
    assert backend.fake.called("Sandbox.delete") == [{"sandbox_id": orphan.external_id}]
    assert {h.external_id for h in reaper.list({"convoy_install": "i1"})} == live


def test_daytona_fake_terminate_is_idempotent(backend):
    handle = backend.create(SandboxSpec())
    backend.terminate(handle)
    backend.terminate(handle)
    backend.terminate(SandboxHandle(backend="daytona", external_id="never-existed"))
    assert len(backend.fake.called("Sandbox.delete")) == 1
    with pytest.raises(SandboxError, match="finished"):
        DaytonaBackend(sdk=backend.fake, api_key="k").attach(handle.external_id)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (daytona.DaytonaRateLimitError("429", status_code=429), True),
        (daytona.DaytonaServiceUnavailableError("503", status_code=503), True),
        (daytona.DaytonaAuthenticationError("bad key", status_code=401), False),
        (daytona.DaytonaBadRequestError("bad image", status_code=400), False),
    ],
    ids=lambda e: type(e).__name__ if isinstance(e, Exception) else str(e),
)
def test_daytona_fake_errors_are_sandbox_errors_marked_transient_when_retrying_helps(
    backend, error, transient
):
    backend.fake.fail_next("Daytona.create", error)
    with pytest.raises(SandboxError) as info:
        backend.create(SandboxSpec())
    assert info.value.transient is transient
    if isinstance(error, daytona.DaytonaAuthenticationError):
        assert "DAYTONA_API_KEY" in str(info.value)


def test_daytona_without_a_key_refuses_before_any_call(tmp_path, monkeypatch):
    monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
    with daytona_fake_backend(tmp_path / "daytona", api_key="") as backend:
        with pytest.raises(SandboxError, match="Daytona is not configured: set DAYTONA_API_KEY"):
            backend.create(SandboxSpec())
        assert backend.fake.calls == [] and backend.fake.clients == []
