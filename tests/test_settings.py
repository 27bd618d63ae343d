"""Configuration mistakes stop Convoy at start with one line naming the variable."""

import subprocess

import pytest

from tests.support import PYTHON, ROOT

pytestmark = pytest.mark.shapes("embedded")


def _check(**env_changes):
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTEST_VERSION", "DATABASE_URL", "REDIS_URL")
    }
    env.update(env_changes)
    return subprocess.run(
        [PYTHON, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CONVOY_SANDBOX_BACKEND": "docker"}, "CONVOY_SANDBOX_BACKEND"),
        ({"CONVOY_SANDBOX_BACKEND": "process"}, "CONVOY_SANDBOX_BACKEND"),
        ({"DATABASE_URL": "mysql://root@localhost/convoy"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"CONVOY_WORKER_CONCURRENCY": "four"}, "CONVOY_WORKER_CONCURRENCY"),
        ({"CONVOY_SANBOX_BACKEND": "bwrap"}, "CONVOY_SANBOX_BACKEND"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0", "DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY"),
    ],
)
def test_bad_configuration_fails_with_one_line(env, variable, tmp_path):
    result = _check(CONVOY_DATA_DIR=str(tmp_path), **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"convoy: configuration error: {variable}:")


def test_good_configuration_passes(tmp_path):
    result = _check(CONVOY_DATA_DIR=str(tmp_path), CONVOY_SANDBOX_BACKEND="gvisor")
    assert result.returncode == 0, result.stderr
