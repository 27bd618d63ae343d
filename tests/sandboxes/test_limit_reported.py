"""A command stopped by a sandbox limit says so where people look: the command's record, its
audit event, one line in the sandbox's log, and the variant's error (through the pipeline's
step failure text)."""

import json

import pytest

from audit.models import AuditEvent
from campaigns.pipeline import _step_failure
from sandboxes.backends.base import SandboxSpec
from sandboxes.models import LogLine
from sandboxes.services import sandbox_create, sandbox_exec

SPEC = SandboxSpec(timeout_s=120, memory_mb=256, pids_max=16)
FORK_BOMB = "while sleep 60 >/dev/null 2>&1 & do :; done"


@pytest.mark.shapes("embedded", "production")
def test_a_fork_bomb_is_reported_as_the_process_limit(db, engines_clean):
    sandbox = sandbox_create(spec=SPEC, backend="bwrap")
    command = sandbox_exec(sandbox=sandbox, argv=["sh", "-c", FORK_BOMB], timeout_s=60)
    command.refresh_from_db()
    assert command.exit_code != 0 and not command.timed_out
    assert command.limit_hit == "process limit reached (pids_max=16)"
    event = AuditEvent.objects.get(sandbox_id=sandbox.pk, action="sandbox.exec.completed")
    assert json.loads(event.body)["payload"]["limit_hit"] == command.limit_hit
    lines = LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True)
    assert "stopped: process limit reached (pids_max=16)" in [line.strip() for line in lines]
    error = _step_failure("transform[0]", {"run": "bomb"}, command, "")
    assert error.startswith("transform[0] `bomb` exited with ")
    assert error.endswith("(process limit reached (pids_max=16))")


@pytest.mark.shapes("embedded", "production")
def test_an_ordinary_failure_reports_no_limit(db, engines_clean):
    sandbox = sandbox_create(spec=SPEC, backend="bwrap")
    command = sandbox_exec(sandbox=sandbox, argv=["sh", "-c", "exit 3"])
    command.refresh_from_db()
    assert (command.exit_code, command.limit_hit) == (3, "")
    assert "(" not in _step_failure("validate[0]", {"run": "x"}, command, "")
