"""`manage.py campaign apply|status` as an operator runs it: exit codes, output, no half-writes."""

import json
import subprocess

import pytest
from django.conf import settings

from campaigns.models import Campaign, RepoRun
from tests.factories import repos_make, spec_for
from tests.support import PYTHON, ROOT, subprocess_env

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]


def _manage(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "manage.py", "campaign", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_apply_invalid_spec_exits_non_zero_and_stores_nothing(manager, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: cleanup\nrepos: [{url: 'ext::sh -c id'}]\ntransform: {run: true}\n")
    result = _manage("apply", str(path), "--launch")
    assert result.returncode == 2, result.stderr
    assert "repos[0].url:" in result.stderr and "(line 2)" in result.stderr
    assert "transform.run: must be a string, got a boolean (line 3)" in result.stderr
    assert not Campaign.objects.exists()


def test_apply_wait_then_status_json(request, manager, tmp_path):
    if not settings.EMBEDDED:  # the embedded shape's command runs its own worker
        request.getfixturevalue("celery_worker")
    tag, _ = repos_make(2)
    path = tmp_path / "cleanup.yaml"
    path.write_text(spec_for(tag, name="cleanup"))
    result = _manage("apply", str(path), "--wait", "--user", "mia")
    # service-00's aggressive variant fails validation: exit 1 (see tests/campaigns/test_cli.py)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "created campaign cleanup" in result.stdout
    assert "summary: 5 passed, 1 validation failed" in result.stdout
    assert set(RepoRun.objects.values_list("state", flat=True)) == {"succeeded"}

    status = _manage("status", "cleanup", "--json")
    data = json.loads(status.stdout)
    assert data["state"] == "completed" and data["counts"]["succeeded"] == 2
    first = data["runs"][0]
    assert first["repository"] == "service-00"
    aggressive = next(v for v in first["variants"] if v["name"] == "aggressive")
    assert {k: aggressive[k] for k in ("state", "validation", "outcome", "files_changed")} == {
        "state": "completed",
        "validation": "failed",
        "outcome": "validation failed",
        "files_changed": 2,
    }
    assert (aggressive["insertions"], aggressive["deletions"]) == (3, 3)
    text = _manage("status", "cleanup").stdout
    assert "cleanup: completed on bwrap" in text and "conservative" in text
