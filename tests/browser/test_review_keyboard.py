"""In Chromium, with the keyboard only: a reviewer clears a 20-repository campaign. One bulk
decision covers the 18 repositories making the same change (their diffs differ only in context
lines and line numbers); the two others are reviewed one by one; one decision is undone."""

import json

import pytest

from audit.models import AuditEvent
from review.models import Decision, ReviewState, RunReview
from tests.browser.support import axe_report, axe_violations, login, shot
from tests.factories import campaign_make, run_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")


def _patch(i: int, *, path: str = "src/settings.py", new: str = "TIMEOUT = 30") -> bytes:
    """The same one-line edit as git prints it in repository i: its own blob ids, line
    numbers, function context and context lines."""
    line = 3 + 7 * i
    return (
        f"diff --git a/{path} b/{path}\nindex {i:07x}..{i + 100:07x} 100644\n"
        f"--- a/{path}\n+++ b/{path}\n"
        f"@@ -{line},3 +{line},3 @@ class Service{i}Config:\n"
        f'     NAME = "svc-{i:02d}"\n-    TIMEOUT = 10\n+    {new}\n     REGION = "r{i % 4}"\n'
    ).encode()


def _campaign(manager):
    campaign = campaign_make(owner=manager, variants=("standard",))
    runs = []
    for i in range(20):
        run = run_make(campaign=campaign)
        if i == 18:
            patch = _patch(i, new="TIMEOUT = 60")  # the same line, another value
        elif i == 19:
            patch = _patch(i, path="src/limits.py")  # the same edit in another file
        else:
            patch = _patch(i)
        variant_make(run=run, name="standard", patch=patch)
        runs.append(run)
    return campaign, runs


def _tab_to(page, testid: str, limit: int = 200) -> None:
    """Press Tab until the element with `testid` has the focus (keyboard only, no clicks)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.dataset.testid") == (
            testid
        ):
            return
    raise AssertionError(f"Tab never reached {testid}")


def _keys_ready(page) -> None:
    page.wait_for_load_state("load")
    page.wait_for_selector("html[data-review-keys=ready]", state="attached")


def test_keyboard_review_of_twenty_repositories(asgi_server, browser_page, manager, reviewer):
    page, base = browser_page, asgi_server
    campaign, runs = _campaign(manager)
    login(page, base, reviewer)

    # Bulk review: the 18 context-only variants are one group, labelled by file and summary.
    page.goto(f"{base}/campaigns/{campaign.pk}/review/bulk/")
    counts = [int(c) for c in page.locator("[data-testid=group-count]").all_inner_texts()]
    assert counts == [18, 1, 1]
    assert page.inner_text("[data-testid=group-files] >> nth=0") == "src/settings.py"
    summary = page.inner_text("[data-testid=group-summary] >> nth=0")
    assert "“TIMEOUT = 10” → “TIMEOUT = 30”" in summary
    # The TIMEOUT = 60 group is near-identical to the big one; the other file's is not.
    assert page.locator("[data-testid=group-near]").count() == 2
    assert page.locator("[data-testid=group-repos] input[type=checkbox]:checked").count() == 18
    shot(page, "keyboard-bulk-1280")
    assert not axe_violations(page), axe_report(axe_violations(page))
    _tab_to(page, "bulk-approve")
    page.keyboard.press("Enter")
    dialog = page.locator("[data-testid=confirm-dialog]")
    dialog.wait_for(state="visible")
    assert "Approve “standard” in 18 repositories?" in dialog.inner_text()
    assert page.evaluate("document.activeElement.dataset.testid") == "confirm-cancel"
    shot(page, "keyboard-bulk-confirm-1280")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Approved 18 change(s).")
    approved = RunReview.objects.filter(campaign=campaign, state=ReviewState.APPROVED)
    assert approved.count() == 18
    # Every approval is bound to that repository's own diff, not the group's sample.
    for d in Decision.objects.filter(run__campaign=campaign, kind="approve"):
        assert d.diff_hash == d.run.variants.get().diff_sha256
    assert len({d.diff_hash for d in Decision.objects.filter(kind="approve")}) == 18

    # The two others, one by one from the queue: o opens, the diff is shown, a approves.
    page.goto(f"{base}/campaigns/{campaign.pk}/review/")
    _keys_ready(page)
    assert page.locator("[data-testid=queue-row]").count() == 2
    page.keyboard.press("o")
    page.wait_for_selector("[data-testid=diff-viewer] .d-add")
    assert page.inner_text("[data-testid=repo-name]") == runs[18].repository.name
    _keys_ready(page)
    page.keyboard.press("a")
    # The queue advances to the next change and offers to undo the approval.
    page.wait_for_selector("[data-testid=undo-bar]")
    assert page.inner_text("[data-testid=repo-name]") == runs[19].repository.name
    assert RunReview.objects.get(run=runs[18]).state == ReviewState.APPROVED
    shot(page, "keyboard-undo-1280")
    _keys_ready(page)
    page.keyboard.press("u")
    page.wait_for_selector("text=is withdrawn")
    assert page.inner_text("[data-testid=repo-name]") == runs[18].repository.name
    assert RunReview.objects.get(run=runs[18]).state != ReviewState.APPROVED
    withdrawn = Decision.objects.get(run=runs[18], kind="approve")
    assert withdrawn.withdrawn_at is not None  # kept, marked withdrawn
    event = json.loads(AuditEvent.objects.get(action="review.decision.withdrawn").body)
    assert event["payload"]["decision_id"] == withdrawn.pk

    # Approve it again, then reject the last one: r moves to the reason, Enter rejects.
    _keys_ready(page)
    page.keyboard.press("a")
    page.wait_for_selector("[data-testid=undo-bar]")
    assert page.inner_text("[data-testid=repo-name]") == runs[19].repository.name
    _keys_ready(page)
    page.keyboard.press("r")
    assert page.evaluate("document.activeElement.dataset.testid") == "reject-reason"
    page.keyboard.type("edits the wrong file")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Nothing else is waiting for a decision.")
    assert RunReview.objects.get(run=runs[19]).state == ReviewState.REJECTED
    assert RunReview.objects.get(run=runs[19]).comment == "edits the wrong file"
    assert approved.count() == 19
    assert page.locator("[data-testid=queue-row]").count() == 0
    shot(page, "keyboard-done-1280")
