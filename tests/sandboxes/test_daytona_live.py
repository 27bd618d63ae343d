"""The Daytona backend against Daytona's real cloud. Runs only with DAYTONA_API_KEY in the
environment (DAYTONA_API_URL and DAYTONA_TARGET optional); otherwise it is reported as
skipped, i.e. not run. Everything it creates carries a `convoy_test` label and is deleted;
its snapshot is deleted.
"""

import os
import uuid

import pytest

from sandboxes.backends.base import ExecOutput, ExecResult, NetworkPolicy, SandboxSpec

pytestmark = [
    pytest.mark.shapes("embedded", "production"),
    pytest.mark.skipif(
        not os.environ.get("DAYTONA_API_KEY"),
        reason="NOT RUN: no Daytona credentials (set DAYTONA_API_KEY, and DAYTONA_API_URL for a "
        "self-hosted Daytona) — Daytona's cloud is only exercised through FakeDaytona",
    ),
]


@pytest.fixture
def live_backend():
    from sandboxes.backends.daytona import DaytonaBackend

    backend = DaytonaBackend()
    label = {"convoy_test": uuid.uuid4().hex[:12]}
    yield backend, label
    for handle in backend.list(label):
        backend.terminate(handle)


def test_daytona_live_create_exec_files_snapshot_fork_and_reap(live_backend):
    backend, label = live_backend
    spec = SandboxSpec(
        image="debian:bookworm-slim",
        cpu=1,
        memory_mb=1024,
        timeout_s=600,
        network=NetworkPolicy.NONE,
        labels=label,
    )
    handle = backend.create(spec)

    events = list(backend.exec(handle, ["sh", "-c", "echo out; echo err >&2; exit 7"]))
    result = events[-1]
    assert isinstance(result, ExecResult) and result.exit_code == 7
    outputs = [e for e in events if isinstance(e, ExecOutput)]
    assert b"".join(e.data for e in outputs if e.stream == "stdout") == b"out\n"
    assert b"".join(e.data for e in outputs if e.stream == "stderr") == b"err\n"
    assert list(backend.exec(handle, ["sleep", "30"], timeout_s=2))[-1].timed_out

    backend.write_file(handle, "seed.txt", b"from the snapshot")
    snapshot = backend.snapshot(handle)
    try:
        [fork] = backend.fork(snapshot, spec, 1)
        assert backend.read_file(fork, "seed.txt") == b"from the snapshot"
        assert {handle.external_id, fork.external_id} <= {
            h.external_id for h in backend.list(label)
        }
    finally:
        for h in backend.list(label):
            if h.external_id != handle.external_id:
                backend.terminate(h)
        backend.delete_snapshot(snapshot)
    backend.terminate(handle)
    backend.terminate(handle)  # idempotent
    assert handle.external_id not in {h.external_id for h in backend.list(label)}
