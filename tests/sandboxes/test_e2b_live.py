"""The E2B backend against E2B's real cloud. Runs only with E2B_API_KEY in the environment;
otherwise it is reported as skipped, i.e. not run. Everything it creates carries a
`convoy_test` label (E2B metadata) and is killed; its snapshot is deleted.

E2B_TEMPLATE names an existing template to use (default `base`), so that the run does not
wait for a template build from a registry image.
"""

import os
import uuid

import pytest

from sandboxes.backends.base import ExecOutput, ExecResult, NetworkPolicy, SandboxSpec

pytestmark = [
    pytest.mark.shapes("embedded", "production"),
    pytest.mark.skipif(
        not os.environ.get("E2B_API_KEY"),
        reason="NOT RUN: no E2B credentials (set E2B_API_KEY) — E2B's cloud is only exercised "
        "through FakeE2B",
    ),
]


@pytest.fixture
def live_backend():
    from sandboxes.backends.e2b import E2BBackend

    image = "debian:bookworm-slim"
    backend = E2BBackend(templates={image: os.environ.get("E2B_TEMPLATE", "base")})
    label = {"convoy_test": uuid.uuid4().hex[:12]}
    yield backend, label, image
    for handle in backend.list(label):
        backend.terminate(handle)


def test_e2b_live_create_exec_files_snapshot_fork_and_reap(live_backend):
    backend, label, image = live_backend
    spec = SandboxSpec(image=image, timeout_s=600, network=NetworkPolicy.NONE, labels=label)
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
        backend.delete_snapshot(snapshot)
    backend.terminate(handle)
    backend.terminate(handle)  # idempotent
    assert handle.external_id not in {h.external_id for h in backend.list(label)}
