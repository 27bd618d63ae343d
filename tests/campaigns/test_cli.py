"""`manage.py campaign …` as an operator runs it: exit codes, the summary by outcome, status per
repository and variant, diffs, logs, --json, and the same permission checks as the pages."""

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from campaigns.demo import demo_repos_create
from campaigns.models import Campaign, CampaignState, RepoRun
from campaigns.services import repositories_register
from tests.factories import campaign_make, spec_for
from tests.support import PYTHON, ROOT, subprocess_env

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]

VALIDATE = "validate[0] `PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q` exit 1"
SETUP = "setup[0] `test -f calc.py` exit 1"


def manage(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "manage.py", "campaign", *args],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def repos_with_legacy(count: int, legacy: set[int]) -> str:
    """`count` demo repositories under a fresh tag; those in `legacy` fail the demo's setup."""
    tag = f"t{uuid.uuid4().hex[:8]}"
    paths = demo_repos_create(Path(settings.REPO_ROOTS[0]) / tag, count, legacy=legacy)
    repositories_register(
        entries=[{"url": f"file://{p}", "ref": "main"} for p in paths], tags=[tag], actor=None
    )
    return tag


@pytest.fixture
def worker(request):
    if not settings.EMBEDDED:  # the embedded shape's command runs its own worker
        request.getfixturevalue("celery_worker")


def test_apply_wait_fails_with_a_summary_naming_each_failing_step(manager, worker, tmp_path):
    tag = repos_with_legacy(3, legacy={2})
    path = tmp_path / "cleanup.yaml"
    path.write_text(spec_for(tag, name="cleanup"))

    result = manage("apply", str(path), "--wait", "--user", "mia")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "some runs or validations failed" in result.stderr
    # by outcome: service-00's aggressive variant breaks its tests; service-02 fails setup
    assert "summary: 5 passed, 1 validation failed, 3 setup failed" in out
    assert f"{VALIDATE} in 1: service-00/aggressive" in out
    assert f"{SETUP} in 1: service-02" in out
    assert "did not execute" not in out

    status = manage("status", "cleanup", "--json", "--user", "mia")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["summary"]["outcomes"] == {
        "passed": 5,
        "validation failed": 1,
        "setup failed": 3,
    }
    first, _, broken = data["runs"]
    assert first["repository"] == "service-00" and first["duration_s"] > 0
    aggressive = next(v for v in first["variants"] if v["name"] == "aggressive")
    assert aggressive["outcome"] == "validation failed"
    assert aggressive["failing_step"] == "validate[0]" and aggressive["exit_code"] == 1
    assert aggressive["files_changed"] == 2 and aggressive["duration_s"] > 0
    assert any("FAILED" in line for line in aggressive["output_tail"])
    assert broken["outcome"] == "setup failed" and broken["exit_code"] == 1
    assert broken["failing_step"] == "setup[0]"
    assert {v["outcome"] for v in broken["variants"]} == {"setup failed"}

    text = manage("status", "cleanup", "service-00", "--user", "mia").stdout
    assert "validation failed" in text and "failed at validate[0]" in text
    assert "exit code 1" in text and "| FAILED (errors=1)" in text
    assert "service-01" not in text

    diff = manage("diff", "cleanup", "service-00", "--variant", "conservative", "--user", "mia")
    assert diff.returncode == 0
    assert diff.stdout.startswith("# service-00 · conservative · passed · 1 file(s) +2 -2")
    assert "-        self.assertEquals(add(0, 1), 1)" in diff.stdout
    assert "+        self.assertEqual(add(0, 1), 1)" in diff.stdout
    diffs = json.loads(manage("diff", "cleanup", "--json").stdout)["diffs"]
    assert len(diffs) == 9 and {d["repository"] for d in diffs} == {
        f"service-0{i}" for i in range(3)
    }

    # logs of a final run print what was stored and stop
    logs = manage("logs", "cleanup", "service-02", "--user", "mia", timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert "[service-02 " in logs.stdout and logs.stdout.rstrip().endswith("1 failure(s)")
    lines = manage("logs", "cleanup", "service-00", "--json", "--no-follow").stdout.splitlines()
    assert lines and all(json.loads(line)["repository"] == "service-00" for line in lines)

    missing = manage("diff", "cleanup", "nope")
    assert missing.returncode == 4 and "no repository 'nope'" in missing.stderr

    # an edited spec for the finished campaign: its revision is shown, applied with --yes
    path.write_text(spec_for(tag, name="cleanup").replace("STYLE: aggressive}", "STYLE: x}"))
    shown = manage("apply", str(path), "--user", "mia")
    assert shown.returncode == 6 and "pass --yes" in shown.stderr
    assert "+  - {name: aggressive, env: {STYLE: x}}" in shown.stdout
    assert "re-runs 2 run(s) (aggressive)" in shown.stdout
    assert not Campaign.objects.get(name="cleanup").revisions.exists()
    applied = manage("apply", str(path), "--yes", "--json", "--user", "mia")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["state"] == "running"
    assert Campaign.objects.get(name="cleanup").revisions.count() == 2


def test_wait_times_out_with_exit_3(manager, tmp_path):
    tag = repos_with_legacy(1, legacy=set())
    path = tmp_path / "slow.yaml"
    path.write_text(spec_for(tag, name="slow"))
    result = manage("apply", str(path), "--wait", "--timeout", "0", "--user", "mia")
    assert result.returncode == 3 and "timed out after 0s" in result.stderr


def test_commands_check_the_user_as_pages_do(manager, reviewer, outsider, tmp_path):
    campaign = campaign_make(owner=manager)
    # an outsider may not see campaigns at all: the same 404 as the page
    refused = manage("status", campaign.name, "--user", "otto")
    assert refused.returncode == 4 and "No such campaign." in refused.stderr
    refused = manage("diff", campaign.name, "--user", "otto")
    assert refused.returncode == 4
    assert manage("logs", campaign.name, "--no-follow", "--user", "otto").returncode == 4
    # a reviewer sees it, but may not apply specs
    assert manage("status", campaign.name, "--user", "rob").returncode == 0
    path = tmp_path / "x.yaml"
    path.write_text(spec_for("nothing", name="x"))
    refused = manage("apply", str(path), "--user", "rob")
    assert refused.returncode == 4 and "campaign manage" in refused.stderr
    assert not Campaign.objects.filter(name="x").exists()
    assert manage("status", "nope", "--user", "mia").returncode == 4
    assert manage("status", campaign.name, "--user", "ghost").returncode == 4


def test_apply_to_a_cancelled_campaign_is_a_state_error(manager, tmp_path):
    tag = repos_with_legacy(1, legacy=set())
    path = tmp_path / "c.yaml"
    path.write_text(spec_for(tag, name="gone"))
    assert manage("apply", str(path), "--user", "mia").returncode == 0
    Campaign.objects.filter(name="gone").update(state=CampaignState.CANCELLED)
    result = manage("apply", str(path), "--json", "--user", "mia")
    assert result.returncode == 5 and "cancelled" in result.stderr


def test_preview_runs_a_sample_then_apply_launches_the_rest(manager, worker, tmp_path):
    tag = repos_with_legacy(3, legacy=set())
    path = tmp_path / "p.yaml"
    path.write_text(spec_for(tag, name="sampled"))
    result = manage("preview", str(path), "--sample", "1", "--user", "mia")
    # service-00's aggressive variant fails its tests: the preview shows it, and says so
    assert result.returncode == 1, result.stdout + result.stderr
    assert "previewing on 1 repositories (not launched)" in result.stdout
    assert "# service-00 · standard · passed" in result.stdout
    assert "+        self.assertEqual(add(0, 1), 1)" in result.stdout
    assert "preview: 2 passed, 1 validation failed" in result.stdout
    campaign = Campaign.objects.get(name="sampled")
    assert campaign.state == CampaignState.PREVIEWING and campaign.launched_at is None
    sample = RepoRun.objects.get(campaign=campaign)

    result = manage("apply", str(path), "--wait", "--json", "--user", "mia")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "completed"
    assert data["outcomes"] == {"passed": 8, "validation failed": 1}
    assert RepoRun.objects.filter(campaign=campaign).count() == 3
    assert RepoRun.objects.get(pk=sample.pk).attempt == 1  # the sample's run was kept


@pytest.mark.shapes("production")
def test_logs_follow_a_run_until_it_is_final(manager, celery_worker, tmp_path):
    tag = repos_with_legacy(1, legacy=set())
    path = tmp_path / "follow.yaml"
    path.write_text(spec_for(tag, name="follow"))
    assert manage("apply", str(path), "--launch", "--user", "mia").returncode == 0
    # started at once, while the run is queued or running: it returns when the run is final
    result = manage("logs", "follow", "service-00", "--user", "mia", timeout=180)
    assert result.returncode == 0, result.stderr
    assert RepoRun.objects.get(campaign__name="follow").state == "succeeded"
    out = result.stdout
    assert "[service-00 standard] fixed test_calc.py" in out
    assert "--convoy-step-done-" not in out and "diff --git" not in out  # Convoy's internals
    assert out.rstrip().endswith("# final: 1 run(s), 1 failure(s)")  # aggressive breaks it


def test_preview_no_wait_json_and_a_second_preview_is_a_state_error(manager, tmp_path):
    tag = repos_with_legacy(2, legacy=set())
    path = tmp_path / "p.yaml"
    path.write_text(spec_for(tag, name="quick"))
    result = manage("preview", str(path), "--no-wait", "--sample", "1", "--json", "--user", "mia")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"campaign": "quick", "state": "previewing", "sample": 1}
    again = manage("preview", str(path), "--no-wait", "--user", "mia")
    assert again.returncode == 5 and "only drafts can be previewed" in again.stderr
    assert manage("preview", str(path), "--sample", "0", "--user", "mia").returncode == 2
