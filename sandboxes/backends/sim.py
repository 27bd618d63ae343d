"""A SIMULATION backend for scale benchmarks: no engine, no processes, canned results.

It exists so that `benchmarks/scale_sim.py` can push 100,000 runs through the real dispatcher,
workers, database and audit trail without starting 100,000 sandboxes. Nothing runs: every
command "succeeds" at once, a transform's diff is a fixed one-line patch, and a checkout returns
a commit derived from the repository's URL without touching git. It is registered only when
CONVOY_SANDBOX_SIM=1 (see config/settings.py), and it never isolates anything because it never
executes anything.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections.abc import Iterator, Mapping, Sequence

from sandboxes.backends.base import (
    Capability,
    ExecEvent,
    ExecOutput,
    ExecResult,
    SandboxBackend,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SnapshotHandle,
)

_DONE_RE = re.compile(r"--convoy-step-done-[0-9a-f]+--")
SIM_PATCH = (
    b"diff --git a/test_calc.py b/test_calc.py\n"
    b"index 1111111..2222222 100644\n"
    b"--- a/test_calc.py\n"
    b"+++ b/test_calc.py\n"
    b"@@ -1 +1 @@\n"
    b"-        self.assertEquals(mean([1, 2]), 1.5)\n"
    b"+        self.assertEqual(mean([1, 2]), 1.5)\n"
)


class SimBackend(SandboxBackend):
    """Canned results, in process. Capabilities of a local engine with snapshots, so that the
    executor takes its production path (prepare, snapshot, fork per variant)."""

    name = "sim"
    capabilities = Capability.STREAMED_EXEC | Capability.SNAPSHOT | Capability.SIMULATED
    isolation = "NONE: a simulation; nothing is executed"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._live: set[str] = set()
        self._lock = threading.Lock()

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def create(self, spec: SandboxSpec) -> SandboxHandle:
        handle = SandboxHandle(self.name, self._new_id("sim"), dict(spec.labels))
        with self._lock:
            self._live.add(handle.external_id)
        return handle

    def attach(self, external_id: str) -> SandboxHandle:
        with self._lock:
            if external_id not in self._live:
                raise SandboxError(f"simulated sandbox {external_id} is gone")
        return SandboxHandle(self.name, external_id)

    def list(self, labels: Mapping[str, str]) -> list[SandboxHandle]:
        return []  # nothing outlives the process: there is nothing for the reaper to find

    def write_file(self, handle: SandboxHandle, path: str, data: bytes, mode: int = 0o644) -> None:
        return None

    def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        raise SandboxError(f"{path}: a simulated sandbox holds no files")

    def exec(
        self,
        handle: SandboxHandle,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        output_cap: int = 10 * 1024 * 1024,
        last: bool = False,
    ) -> Iterator[ExecEvent]:
        script = " ".join(argv)
        done = _DONE_RE.search(script)
        # The executor's transform + diff wrapper answers its marker, then the patch.
        out = b"\n" + done[0].encode() + b"\n" + SIM_PATCH if done else b"ok\n"
        yield ExecOutput("stdout", out)
        yield ExecResult(exit_code=0, duration_ms=0, bytes_out=len(out))

    def terminate(self, handle: SandboxHandle) -> None:
        with self._lock:
            self._live.discard(handle.external_id)

    def snapshot(self, handle: SandboxHandle) -> SnapshotHandle:
        return SnapshotHandle(self.name, self._new_id("simsnap"))

    def create_from_snapshot(self, snapshot: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        return self.create(spec)

    def delete_snapshot(self, snapshot: SnapshotHandle) -> None:
        return None

    @staticmethod
    def simulated_commit(url: str, ref: str) -> str:
        """The commit a checkout of `url` at `ref` "finds": stable per repository and ref."""
        return hashlib.sha1(f"{url}@{ref}".encode(), usedforsecurity=False).hexdigest()
