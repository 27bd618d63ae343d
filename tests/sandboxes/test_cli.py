"""`manage.py sandbox` as an operator runs it: a real process on this run's database."""

import subprocess

import pytest

from sandboxes.models import Sandbox, SandboxState
from tests.support import PYTHON, ROOT, subprocess_env

pytestmark = pytest.mark.shapes("embedded", "production")


def sandbox_cli(*args, timeout=120):
    return subprocess.run(
        [PYTHON, "manage.py", "sandbox", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_exec_streams_output_and_exits_with_the_commands_code(transactional_db):
    run = sandbox_cli(
        "exec", "--backend", "bwrap", "--", "sh", "-c", "echo out; echo err >&2; exit 7"
    )
    first, *rest = run.stderr.splitlines()
    sandbox = Sandbox.objects.get()
    assert first == f"sandbox {sandbox.pk}"
    assert "err" in rest
    assert run.stdout == "out\n"
    assert run.returncode == 7
    assert sandbox.state == SandboxState.TERMINATED
    assert sandbox.commands.get().exit_code == 7


def test_exec_timeout_exits_124_and_list_shows_the_sandbox(transactional_db):
    run = sandbox_cli("exec", "--backend", "gvisor", "--timeout", "1", "--memory-mb", "128", "--",
                      "sleep", "60")  # fmt: skip
    assert run.returncode == 124
    assert "timed out" in run.stderr
    sandbox = Sandbox.objects.get()
    assert (sandbox.backend, sandbox.limits["memory_mb"]) == ("gvisor", 128)
    listing = sandbox_cli("list", "--all")
    assert f"{sandbox.pk:>6}  gvisor" in listing.stdout


def test_bad_options_are_refused_with_the_option_named(transactional_db):
    run = sandbox_cli("exec", "--timeout", "0", "--", "true")
    assert run.returncode != 0
    assert "--timeout" in run.stderr
    assert not Sandbox.objects.exists()
    run = sandbox_cli("reap")
    assert run.returncode == 0 and "0 sandboxes reaped" in run.stderr
