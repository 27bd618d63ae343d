"""The plain-process backend: NO isolation. For development on machines without bwrap/runsc.

Commands run as the worker's own user in the sandbox's workspace directory, with only rlimits
and a process-group kill on timeout. The spec's files are in a host directory named by
$CONVOY_FILES (there is no /convoy/files). Refused unless CONVOY_ALLOW_UNSAFE_PROCESS_BACKEND
is set, and every page showing such a sandbox says it was unsafe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence

from sandboxes.backends.local import LocalBackend, rlimits_apply
from sandboxes.workspaces import Meta


class ProcessBackend(LocalBackend):
    name = "process"
    id_prefix = "proc"
    unsafe = True
    isolation = "NONE: plain host processes (development only)"

    def _popen(
        self, meta: Meta, argv: Sequence[str], cwd: str, env: dict[str, str], *, last: bool = False
    ) -> tuple[subprocess.Popen, Callable[[], None]]:
        workspace = self.ws.workspace(meta.external_id)
        host_cwd = workspace / os.path.relpath(cwd, "/workspace")
        env = {**env, "HOME": str(workspace)}
        if meta.extra.get("files"):  # no mounts here: the host directory, read-only by mode only
            env["CONVOY_FILES"] = str(self.files_path(meta.external_id))
        limits = meta.limits
        proc = subprocess.Popen(
            list(argv),
            cwd=host_cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=lambda: rlimits_apply(limits, address_space=True),
            start_new_session=True,
        )

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        return proc, kill
