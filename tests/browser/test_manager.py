"""In Chromium, as a manager works: the home page, the spec editor (starter, line numbers, the
live check agreeing with the submit), preview on a sample, launch the rest, edit and re-apply
as a revision, the campaign list's search, and the sandbox page's commands. axe-core finds
nothing on these pages at 1280 px and 390 px; screenshots are saved as artifacts."""

import pytest

from campaigns.models import Campaign, CampaignRevision, CampaignState, RepoRun, Variant
from tests.browser.support import WIDTHS, axe_report, axe_violations, login, page_overflows, shot
from tests.factories import repos_make, spec_for
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")


def _axe_both_widths(page, name: str) -> None:
    for width, (w, h) in WIDTHS.items():
        page.set_viewport_size({"width": w, "height": h})
        shot(page, f"manager-{name}-{width}")
        violations = axe_violations(page)
        assert not violations, f"{name} at {width}:\n{axe_report(violations)}"
        assert not page_overflows(page), f"{name} scrolls sideways at {width}"
    page.set_viewport_size({"width": 1280, "height": 900})


def _confirm(page) -> None:
    page.wait_for_selector("[data-testid=confirm-dialog]", state="visible")
    page.click("[data-testid=confirm-ok]")


@pytest.fixture
def manager_page(browser_page):
    """A page whose context lets axe-core be injected under the site's CSP (script-src self)."""
    context = browser_page.context.browser.new_context(
        viewport={"width": 1280, "height": 900}, bypass_csp=True
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def test_manager_previews_launches_and_revises(
    asgi_server, manager_page, manager, reviewer, admin_user
):
    page, base = manager_page, asgi_server
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    tag, _ = repos_make(3)
    login(page, base, manager)

    # home: what needs me
    page.goto(f"{base}/")
    assert "None running" in page.inner_text("[data-testid=home-mine]")
    _axe_both_widths(page, "home")

    # the editor starts from a template, numbers its lines, and checks as it is typed
    page.goto(f"{base}/campaigns/new/")
    assert "name: my-campaign" in page.input_value("#id_spec")
    assert page.inner_text("[data-spec-lines]").split("\n")[:3] == ["1", "2", "3"]
    _axe_both_widths(page, "new")
    unknown = spec_for("no-such-tag", name="web-cleanup")
    page.fill("#id_spec", "")
    page.type("#id_spec", unknown[:40])  # typing fires the live check
    page.fill("#id_spec", unknown)
    page.dispatch_event("#id_spec", "input")
    live = page.wait_for_selector(".field-error:has-text('no-such-tag')")
    live_text = live.inner_text()
    lines = page.inner_text("[data-spec-lines]").split("\n")
    assert len(lines) == unknown.count("\n") + 1
    page.click("[data-testid=create]")  # the submit refuses it with the same words
    page.wait_for_selector(".field-error")
    assert live_text in page.inner_text("[data-testid=spec-errors]")
    assert not Campaign.objects.filter(name="web-cleanup").exists()

    page.fill("#id_spec", spec_for(tag, name="web-cleanup"))
    page.dispatch_event("#id_spec", "input")
    page.wait_for_selector("#spec-errors:has-text('The spec is valid.')")
    page.click("[data-testid=create]")
    page.wait_for_selector("[data-testid=preview]")
    campaign = Campaign.objects.get(name="web-cleanup")

    # preview on one repository: its diffs and validation, not a launch
    page.fill("#id_sample", "1")
    page.click("[data-testid=preview]")
    results = page.wait_for_selector(
        "[data-testid=preview-results]:has-text('Done:')", timeout=120_000
    )
    assert "validation failed" in results.inner_text()  # service-00's aggressive variant
    page.click("[data-testid=preview-results] details:has-text('standard') summary")
    diff = "[data-testid=preview-results] details:has-text('standard') [data-testid=preview-diff]"
    assert "assertEqual(add(0, 1), 1)" in page.inner_text(diff)
    assert Campaign.objects.get(pk=campaign.pk).launched_at is None
    _axe_both_widths(page, "preview")

    # launch the rest: the sample's run is kept
    sample = RepoRun.objects.get(campaign=campaign)
    page.click("[data-testid=launch]")
    _confirm(page)
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED,
        timeout=180,
        what="the campaign to complete",
    )
    assert RepoRun.objects.filter(campaign=campaign).count() == 3
    assert RepoRun.objects.filter(pk=sample.pk).exists()

    # edit and re-apply: the spec diff and plan first, then the revision
    page.goto(f"{base}/campaigns/{campaign.pk}/")
    page.click("[data-testid=edit]")
    edited = spec_for(tag, name="web-cleanup").replace(
        "{name: aggressive, env: {STYLE: aggressive}}",
        "{name: aggressive, env: {STYLE: aggressive, EXTRA: '1'}}",
    )
    page.fill("#id_spec", edited)
    page.click("[data-testid=save-spec]")
    plan = page.wait_for_selector("[data-testid=revision-plan]")
    assert "3 runs re-run: aggressive" in plan.inner_text()
    assert "EXTRA: '1'" in page.inner_text("[data-testid=spec-diff]")
    _axe_both_widths(page, "revision-plan")
    page.click("[data-testid=apply-revision]")
    _confirm(page)
    page.wait_for_selector("[data-testid=revisions]")
    assert page.locator("[data-testid=revision-row]").count() == 2
    assert CampaignRevision.objects.filter(campaign=campaign).count() == 2
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED,
        timeout=180,
        what="the revision's runs to finish",
    )
    page.reload()
    _axe_both_widths(page, "campaign-revised")

    # the list: search narrows it
    page.goto(f"{base}/campaigns/")
    page.fill("#campaign-q", "web-clean")
    page.wait_for_selector("[data-testid=campaign-row]:has-text('web-cleanup')")
    page.fill("#campaign-q", "zzz-nothing")
    page.wait_for_selector("text=No campaign matches.")
    _axe_both_widths(page, "list")

    # the sandbox page shows the user's commands, the step, and the failing one
    failed = Variant.objects.get(
        run__campaign=campaign, run__repository__name="service-00", name="aggressive"
    )
    page.goto(f"{base}/sandboxes/{failed.sandbox_id}/")
    shown = page.locator("[data-testid=command-shown]").all_inner_texts()
    assert "python3 $CONVOY_FILES/fix.py --style $STYLE" in shown
    assert not any("__convoy_step" in text or "convoy-step-done" in text for text in shown)
    assert "validate[0]" in page.locator("[data-testid=command-step]").all_inner_texts()
    log = page.inner_text("[data-testid=log-lines]")  # the live log reads the same way
    assert "$ python3 $CONVOY_FILES/fix.py --style $STYLE" in log
    assert not any(s in log for s in ("__convoy_step", "convoy-step-done", "diff --git"))
    assert page.locator("[data-testid=failing-step]").count() == 1
    assert "exit 1" in page.inner_text("tr.failing-step [data-testid=command-exit]")
    assert "UTC" not in page.inner_text("[data-testid=commands] time >> nth=0")  # local time
    _axe_both_widths(page, "sandbox")

    # an admin searches the sandbox list; a reviewer's home counts the changes waiting
    login(page, base, admin_user)
    page.goto(f"{base}/sandboxes/?all=1")
    page.fill("#sandbox-q", str(failed.sandbox_id))
    page.wait_for_selector(f"[data-testid=sandbox-row] a:text-is('{failed.sandbox_id}')")
    _axe_both_widths(page, "sandbox-list")
    login(page, base, reviewer)
    page.goto(f"{base}/")
    assert int(page.inner_text("[data-testid=queue-total]")) == 3
    _axe_both_widths(page, "home-reviewer")
    assert not errors, errors
