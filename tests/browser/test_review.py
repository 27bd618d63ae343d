"""In Chromium, end to end: launch from YAML, compare three variants, pick and approve,
four-eyes, bulk approval, publishing to local remotes with exactly the approved diff."""

import subprocess
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from campaigns.demo import _git as demo_git
from campaigns.models import Campaign, RepoRun, Variant
from campaigns.services import repositories_register
from review.models import Changeset, ReviewState, RunReview
from tests.conftest import screenshot
from tests.factories import PASSWORD, runs_final, spec_for
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")

CALC = (
    "def add(a, b):\n    return a + b\n\n\ndef mean(xs):\n    return round(sum(xs) / len(xs), 2)\n"
)
TESTS = (
    "import unittest\n\nfrom calc import add, mean\n\n\n"
    "class CalcTest(unittest.TestCase):\n"
    "    def test_add(self):\n"
    "        self.assertEquals(add(1, 1), 2)\n{extra}\n"
    "    def test_mean(self):\n"
    "        self.assertEquals(mean([1, 2]), 1.5)\n"
)


def _repos(tag: str, count: int) -> list[Path]:
    """`count` repositories making the same change (other headers, so other line numbers and
    blob ids), and the last one making a different change."""
    root = Path(settings.REPO_ROOTS[0]) / tag
    paths = []
    for i in range(count):
        path = root / f"svc-{i:02d}"
        path.mkdir(parents=True)
        header = f"# svc-{i:02d}\n" + "# -\n" * i
        extra = "        self.assertEquals(add(2, 2), 4)\n" if i == count - 1 else ""
        (path / "calc.py").write_text(CALC)
        (path / "test_calc.py").write_text(header + TESTS.format(extra=extra))
        demo_git("init", "--quiet", "--initial-branch=main", cwd=path)
        demo_git("add", "-A", cwd=path)
        demo_git("commit", "--quiet", "-m", "Initial commit", cwd=path)
        paths.append(path)
    repositories_register(
        entries=[{"url": f"file://{p}", "ref": "main"} for p in paths], tags=[tag], actor=None
    )
    return paths


def keys_ready(page):
    """Wait until review.js has bound its keys on the page now shown."""
    page.wait_for_load_state("load")
    page.wait_for_selector("html[data-review-keys=ready]", state="attached")


def _login(page, base, user):
    page.context.clear_cookies()
    page.goto(f"{base}/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=whoami]")


def test_review_end_to_end(asgi_server, browser_page, manager, reviewer):
    page, base = browser_page, asgi_server
    tag = f"rv{uuid.uuid4().hex[:6]}"
    paths = _repos(tag, 5)

    # The manager creates the campaign from YAML and launches it.
    _login(page, base, manager)
    page.goto(f"{base}/campaigns/new/")
    page.fill("#id_spec", spec_for(tag, name=f"review-{tag}", backend="bwrap"))
    page.click("button:has-text('Create draft')")
    page.click("[data-testid=launch]")
    page.click("[data-testid=confirm-ok]")  # the confirmation dialog names what happens
    page.wait_for_selector("[data-testid=review-links]")
    campaign = Campaign.objects.get(name=f"review-{tag}")
    runs_final(campaign, timeout=240)
    assert set(RepoRun.objects.filter(campaign=campaign).values_list("state", flat=True)) == {
        "succeeded"
    }

    # The reviewer sees the dashboard, opens the first repository from the queue (keyboard).
    _login(page, base, reviewer)
    page.goto(f"{base}/campaigns/{campaign.pk}/")
    page.click("[data-testid=review-links] >> text=Dashboard")
    page.wait_for_selector("[data-testid=burndown] svg")
    assert page.inner_text("[data-testid=review-todo]") == "5"
    screenshot(page, "review-dashboard")
    page.goto(f"{base}/campaigns/{campaign.pk}/review/")
    keys_ready(page)
    page.keyboard.press("o")
    page.wait_for_selector("[data-testid=variants]")
    for name in ("conservative", "standard", "aggressive"):
        assert page.is_visible(f"[data-testid=variant-{name}]")
    failing = page.inner_text("[data-testid=variant-aggressive] [data-testid=validation]")
    assert failing.lower() == "failed"
    assert "Error" in page.inner_text("[data-testid=variant-aggressive] [data-testid=output-tail]")
    # Compare two variants, then show "standard", pick it (p) and approve it (a).
    page.select_option("[data-testid=compare-form] select[name=a]", label="conservative")
    page.select_option("[data-testid=compare-form] select[name=b]", label="aggressive")
    page.click("[data-testid=compare-form] button")
    page.wait_for_selector("[data-testid=compare]")
    compared = page.inner_text("[data-testid=compare]")
    assert "calc.py\nonly in aggressive" in compared and "test_calc.py\nsame in both" in compared
    screenshot(page, "review-comparison")
    # The split view swaps in place (htmx), without reloading the page.
    page.evaluate("window.__stayed = true")
    page.click("[data-testid=mode-split]")
    page.wait_for_selector(".diff-split")
    assert page.evaluate("window.__stayed === true")
    page.click("[data-testid=variant-standard] h2 a")
    page.wait_for_selector("[data-testid=variant-standard] >> text=shown")
    keys_ready(page)
    page.keyboard.press("p")
    page.wait_for_selector("text=Picked “standard”")
    keys_ready(page)
    page.keyboard.press("a")
    page.wait_for_selector("text=Approved the change")
    first_run = RepoRun.objects.get(campaign=campaign, repository__url=f"file://{paths[0]}")
    review = RunReview.objects.get(run=first_run)
    assert review.state == ReviewState.APPROVED and review.variant.name == "standard"
    compare_url = page.url.split("?")[0]

    # The four-eyes rule stops the manager who launched it.
    _login(page, base, manager)
    page.goto(compare_url)
    assert "someone else must approve" in page.inner_text("[data-testid=four-eyes]")
    assert not page.is_visible("[data-testid=approve]")

    # Bulk approval: the identical "conservative" diffs in one group; the odd repo is apart.
    _login(page, base, reviewer)
    page.goto(f"{base}/campaigns/{campaign.pk}/review/bulk/?variant=conservative")
    counts = [int(c) for c in page.locator("[data-testid=group-count]").all_inner_texts()]
    assert counts == [3, 1]
    screenshot(page, "review-bulk")
    page.click("[data-testid=bulk-approve]")
    assert "in 3 repositories" in page.inner_text("[data-testid=confirm-dialog]")
    page.click("[data-testid=confirm-ok]")
    page.wait_for_selector("text=Approved 3 change(s).")
    odd = RepoRun.objects.get(campaign=campaign, repository__url=f"file://{paths[-1]}")
    assert not RunReview.objects.filter(run=odd, state=ReviewState.APPROVED).exists()
    approved = RunReview.objects.filter(campaign=campaign, state=ReviewState.APPROVED)
    assert approved.count() == 4
    # The different one is opened from the queue and rejected with the keyboard (r: reason).
    page.goto(f"{base}/campaigns/{campaign.pk}/review/?which=todo")
    keys_ready(page)
    assert page.locator("[data-testid=queue-row]").count() == 1
    page.keyboard.press("o")
    page.wait_for_selector("[data-testid=diff-viewer]")
    keys_ready(page)
    page.keyboard.press("r")
    page.keyboard.type("asserts a different sum")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Rejected the change")
    assert RunReview.objects.get(run=odd).comment == "asserts a different sum"

    # Publishing pushes a branch to each local remote with exactly the approved diff.
    page.goto(f"{base}/campaigns/{campaign.pk}/review/?which=approved")
    page.click("[data-testid=publish-approved]")
    # The confirmation says what is replaced: only this campaign's own earlier push.
    assert "replacing only what this campaign pushed" in page.inner_text(
        "[data-testid=confirm-dialog]"
    )
    page.click("[data-testid=confirm-ok]")
    wait_for(
        lambda: Changeset.objects.filter(campaign=campaign, state="pushed").count() == 4,
        timeout=60,
        what="four changesets pushed",
    )
    page.wait_for_selector("[data-testid=changeset-row]")
    for rv in approved.select_related("run__repository"):
        variant = Variant.objects.get(pk=rv.variant_id)
        repo = Path(rv.run.repository.url.removeprefix("file://"))
        pushed = subprocess.run(
            [
                "git",
                "-c",
                "core.hooksPath=/dev/null",
                "diff",
                "--binary",
                rv.run.base_commit,
                "convoy/assert-equal",
            ],
            cwd=repo,
            check=True,
            capture_output=True,
        ).stdout
        assert pushed == bytes(variant.patch), rv.run.repository.name
    assert not Changeset.objects.filter(run=odd).exists()
