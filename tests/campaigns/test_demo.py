"""`manage.py demo_seed` creates a dozen real repositories and a 3-variant campaign, once."""

import subprocess

import pytest
from django.core.management import call_command

from campaigns.demo import DEMO_CAMPAIGN, DEMO_REPO_COUNT
from campaigns.models import Campaign, RepoRun, Repository

pytestmark = pytest.mark.shapes("embedded", "production")


def test_demo_seed_is_idempotent_and_repos_are_real_projects(db, capsys):
    call_command("demo_seed")
    call_command("demo_seed")
    out = capsys.readouterr().out
    assert "Demo campaign launched over 12 repositories" in out
    assert "Demo campaign assert-equal-cleanup is running." in out
    assert Repository.objects.count() == DEMO_REPO_COUNT
    campaign = Campaign.objects.get(name=DEMO_CAMPAIGN)
    assert campaign.variant_names == ["conservative", "standard", "aggressive"]
    assert RepoRun.objects.filter(campaign=campaign).count() == DEMO_REPO_COUNT
    path = Repository.objects.first().url.removeprefix("file://")
    tests = subprocess.run(
        ["python3", "-m", "unittest", "-q"], cwd=path, capture_output=True, text=True
    )
    assert tests.returncode == 0 and "Ran 2 tests" in tests.stderr
