"""The Modal backend against Modal's real cloud. Runs only with Modal credentials
(MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or ~/.modal.toml); otherwise it is reported as
skipped, i.e. not run. Everything it creates carries a `convoy_test` label and is terminated.
"""

import os
import uuid
from pathlib import Path

import pytest

from sandboxes.backends.base import (
    ExecOutput,
    ExecResult,
    NetworkPolicy,
    SandboxError,
    SandboxSpec,
)


def modal_credentials() -> bool:
    env = os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET")
    return bool(env) or (Path.home() / ".modal.toml").is_file()


pytestmark = [
    pytest.mark.shapes("embedded", "production"),
    pytest.mark.skipif(
        not modal_credentials(),
        reason="NOT RUN: no Modal credentials (set MODAL_TOKEN_ID/MODAL_TOKEN_SECRET "
        "or write ~/.modal.toml) — Modal's cloud is only exercised through FakeModal",
    ),
]


@pytest.fixture
def live_backend():
    from sandboxes.backends.modal import ModalBackend

    backend = ModalBackend()
    label = {"convoy_test": uuid.uuid4().hex[:12]}
    yield backend, label
    for handle in backend.list(label):
        backend.terminate(handle)


def test_modal_live_create_exec_files_snapshot_fork_and_reap(live_backend):
    backend, label = live_backend
    spec = SandboxSpec(
        image="debian:bookworm-slim",
        cpu=0.25,
        memory_mb=512,
        timeout_s=600,
        idle_timeout_s=300,
        network=NetworkPolicy.NONE,
        labels=label,
    )
    handle = backend.create(spec)

    events = list(backend.exec(handle, ["sh", "-c", "echo out; echo err >&2; exit 7"]))
    result = events[-1]
    assert isinstance(result, ExecResult)
    assert result.exit_code == 7
    outputs = [e for e in events if isinstance(e, ExecOutput)]
    assert b"".join(e.data for e in outputs if e.stream == "stdout") == b"out\n"
    assert b"".join(e.data for e in outputs if e.stream == "stderr") == b"err\n"

    timed = list(backend.exec(handle, ["sleep", "30"], timeout_s=2))[-1]
    assert timed.timed_out

    backend.write_file(handle, "seed.txt", b"from the snapshot")
    try:
        snapshot = backend.snapshot(handle)
    except SandboxError as exc:  # Modal: a snapshot right after start can fail; retry once
        if not exc.transient:
            raise
        snapshot = backend.snapshot(handle)
    [fork] = backend.fork(snapshot, spec, 1)
    assert backend.read_file(fork, "seed.txt") == b"from the snapshot"

    listed = {h.external_id for h in backend.list(label)}
    assert {handle.external_id, fork.external_id} <= listed
    backend.terminate(handle)
    backend.terminate(handle)  # idempotent
    assert handle.external_id not in {h.external_id for h in backend.list(label)}
