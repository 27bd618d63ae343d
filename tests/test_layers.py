"""The layer rules are checked by a machine: import-linter fails on an import that breaks them."""

import shutil
import subprocess

import pytest

from tests.support import ROOT

PACKAGES = ["config", "review", "campaigns", "agents", "sandboxes", "accounts", "audit", "core"]

pytestmark = pytest.mark.shapes("embedded", "production")


def _tree_copy(dest):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _lint(cwd):
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "lint-imports"), "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_lower_layer_importing_a_higher_one_fails_the_check(tmp_path):
    _tree_copy(tmp_path)
    clean = _lint(tmp_path)
    assert clean.returncode == 0, clean.stdout[-2000:]

    with open(tmp_path / "sandboxes" / "models.py", "a") as f:
        f.write("\n\ndef _reach_up():\n    from campaigns.models import Campaign  # noqa\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    assert "sandboxes is not allowed to import campaigns" in broken.stdout


def test_only_migrations_reach_across_apps_by_model_name():
    found = subprocess.run(
        ["grep", "-rln", "apps.get_model", "--include=*.py", *PACKAGES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert [p for p in found if "/migrations/" not in p] == []


def test_services_never_take_the_request():
    found = subprocess.run(
        ["grep", "-rn", "request=", *[f"{p}/services.py" for p in PACKAGES]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert found == ""
