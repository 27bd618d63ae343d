"""The demo campaign seeded by `make run`: generated local git repositories and a 3-variant spec.

Each generated repository is a small Python project whose tests use the deprecated
`assertEquals`. Every third one also rounds in its code, which the `aggressive` variant breaks,
so its validation fails there, and the last one has an unexpected layout, so its setup fails:
every state shows up in the UI. Tests and benchmarks reuse
`demo_repos_create` and `DEMO_SPEC`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User

from campaigns.models import Campaign, CampaignState
from campaigns.services import campaign_create, campaign_launch, repositories_register
from core.git import git_run

DEMO_CAMPAIGN = "assert-equal-cleanup"
DEMO_TAG = "demo"
DEMO_REPO_COUNT = 12

FIX_PY = """\
import pathlib
import sys

style = sys.argv[sys.argv.index("--style") + 1]
for path in sorted(pathlib.Path(".").rglob("*.py")):
    if ".git" in path.parts:
        continue
    if style == "conservative" and not path.name.startswith("test_"):
        continue
    text = path.read_text()
    new = text.replace("assertEquals(", "assertEqual(")
    if style == "aggressive":
        new = new.replace("round(", "int(")
    if new != text:
        path.write_text(new)
        print("fixed", path)
"""

DEMO_SPEC = f"""\
name: {DEMO_CAMPAIGN}
description: Replace the deprecated assertEquals with assertEqual
repos: {{tag: {DEMO_TAG}}}
limits: {{timeout_s: 600, cpu: 1, memory_mb: 512}}
network: none
max_parallel: 4
files:
  fix.py: |
{"".join("    " + line + chr(10) for line in FIX_PY.splitlines())}\
setup:
  - run: test -f calc.py
transform:
  run: python3 $CONVOY_FILES/fix.py --style $STYLE
variants:
  - {{name: conservative, env: {{STYLE: conservative}}}}
  - {{name: standard, env: {{STYLE: standard}}}}
  - {{name: aggressive, env: {{STYLE: aggressive}}}}
validate:
  - run: PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q
changeset:
  branch: convoy/assert-equal
  title: Use assertEqual
  commit_message: Replace deprecated assertEquals with assertEqual
"""


def _git(*args: str, cwd: Path) -> None:
    env = {
        "GIT_AUTHOR_NAME": "Convoy Demo",
        "GIT_AUTHOR_EMAIL": "demo@convoy.invalid",
        "GIT_COMMITTER_NAME": "Convoy Demo",
        "GIT_COMMITTER_EMAIL": "demo@convoy.invalid",
        "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    }
    git_run(*args, cwd=cwd, env=env)


def demo_repo_files(index: int) -> dict[str, str]:
    """A tiny project: code, tests that use assertEquals, a README. Every third one rounds."""
    rounds = index % 3 == 0
    mean = "round(sum(xs) / len(xs), 2)" if rounds else "sum(xs) / len(xs)"
    return {
        "README.md": f"# service-{index:02d}\n\nA small demo project for Convoy.\n",
        "calc.py": (f"def add(a, b):\n    return a + b\n\n\ndef mean(xs):\n    return {mean}\n"),
        "test_calc.py": (
            "import unittest\n\nfrom calc import add, mean\n\n\n"
            "class CalcTest(unittest.TestCase):\n"
            "    def test_add(self):\n"
            f"        self.assertEquals(add({index}, 1), {index + 1})\n\n"
            "    def test_mean(self):\n"
            "        self.assertEquals(mean([1, 2]), 1.5)\n"
        ),
    }


def demo_repos_create(
    root: Path, count: int, *, prefix: str = "service", legacy: Iterable[int] = ()
) -> list[Path]:
    """Create `count` git repositories under root (kept if present); return their paths.

    Repositories whose index is in `legacy` keep their code under `src/`, so the demo spec's
    setup step fails there (a failed run, with an error cluster to retry).
    """
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = root / f"{prefix}-{index:02d}"
        paths.append(path)
        if (path / ".git").exists():
            continue
        path.mkdir(exist_ok=True)
        for name, text in demo_repo_files(index).items():
            if index in legacy and name.endswith(".py"):
                (path / "src").mkdir(exist_ok=True)
                name = f"src/{name}"
            (path / name).write_text(text)
        _git("init", "--quiet", "--initial-branch=main", cwd=path)
        _git("add", "-A", cwd=path)
        _git("commit", "--quiet", "-m", "Initial commit", cwd=path)
    return paths


def demo_campaign_seed() -> list[str]:
    """Create the demo repositories and campaign; returns lines to print. Idempotent."""
    root = Path(settings.DATA_DIR) / "repos" / "demo"
    paths = demo_repos_create(root, DEMO_REPO_COUNT, legacy={DEMO_REPO_COUNT - 1})
    repos = repositories_register(
        entries=[{"url": f"file://{p}", "ref": "main"} for p in paths], tags=[DEMO_TAG], actor=None
    )
    lines = [f"Demo repositories: {len(repos)} under {root}"]
    campaign = Campaign.objects.filter(name=DEMO_CAMPAIGN).first()
    if campaign is None:
        owner = User.objects.filter(username="manager").first()
        if owner is None:
            return [*lines, "No 'manager' user: demo campaign not created."]
        campaign = campaign_create(actor=owner, source=DEMO_SPEC)
        lines.append(f"Demo campaign {campaign.name} created.")
    if campaign.state == CampaignState.DRAFT:
        campaign = campaign_launch(campaign=campaign, actor=campaign.owner)
        lines.append(
            f"Demo campaign launched over {campaign.runs.count()} repositories "
            f"on {campaign.backend}; the worker runs it."
        )
    else:
        lines.append(f"Demo campaign {campaign.name} is {campaign.state}.")
    return lines
