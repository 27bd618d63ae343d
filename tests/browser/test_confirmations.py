"""In Chromium: what cannot be taken back asks first, in the page's dialog, naming what will
happen and to how many repositories; a manager follows a failed run to its log and step."""

import pytest

from campaigns.models import Campaign, CampaignState, RunState
from sandboxes.models import Sandbox
from tests.browser.support import login, shot
from tests.factories import campaign_make, patch_for, run_make, variant_make
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")


def test_cancel_asks_in_a_dialog_and_can_be_called_off(asgi_server, browser_page, manager):
    page, base = browser_page, asgi_server
    campaign = campaign_make(owner=manager, variants=("a",))
    # A draft: no worker moves it while the dialog is open.
    Campaign.objects.filter(pk=campaign.pk).update(state=CampaignState.DRAFT)
    for _ in range(3):
        run_make(campaign=campaign, state=RunState.PENDING)
    login(page, base, manager)
    page.goto(f"{base}/campaigns/{campaign.pk}/")
    page.click("[data-testid=cancel]")
    dialog = page.locator("[data-testid=confirm-dialog]")
    dialog.wait_for(state="visible")
    text = dialog.inner_text()
    assert f"Cancel {campaign.name}" in text and "3 repositories" in text
    assert page.inner_text("[data-testid=confirm-ok]") == "Cancel the campaign"
    shot(page, "confirm-cancel-1280")
    page.keyboard.press("Escape")  # called off: nothing is sent
    dialog.wait_for(state="hidden")
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.DRAFT
    page.click("[data-testid=cancel]")
    page.click("[data-testid=confirm-ok]")
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.CANCELLED,
        what="the campaign cancelled once confirmed",
    )


def test_a_failed_run_links_its_setup_log_and_marks_the_step(asgi_server, browser_page, manager):
    page, base = browser_page, asgi_server
    campaign = campaign_make(owner=manager, variants=("a",))
    campaign.spec = {**campaign.spec, "setup": [{"run": "make deps"}], "transform": []}
    campaign.save(update_fields=["spec"])
    ok = run_make(campaign=campaign)
    variant_make(run=ok, name="a", patch=patch_for("m.py", "x", "y"))
    failed = run_make(campaign=campaign, state=RunState.FAILED)
    failed.error = "setup[0] `make deps` exited with 2\nmake: *** No rule to make target"
    failed.save(update_fields=["error"])
    log = Sandbox.objects.create(
        backend="bwrap", owner_kind="run", owner_id=failed.pk, campaign_id=campaign.pk
    )
    login(page, base, manager)
    page.goto(f"{base}/campaigns/{campaign.pk}/runs/{failed.pk}/")
    assert "make deps" in page.inner_text("[data-testid=failing-step]")
    page.click("[data-testid=setup-log]")
    page.wait_for_url(f"**/sandboxes/{log.pk}/")
    page.goto(f"{base}/campaigns/{campaign.pk}/runs/{ok.pk}/")
    page.click("[data-testid=diff-link]")
    page.wait_for_selector("[data-testid=diff-viewer] .d-add")
    assert page.inner_text("[data-testid=repo-name]") == ok.repository.name


def test_hx_confirm_asks_in_the_same_dialog(asgi_server, browser_page, admin_user):
    """htmx's hx-confirm (the sandbox page's Terminate) uses the page's dialog, not the
    browser's unstyled confirm(); calling it off sends nothing."""
    page, base = browser_page, asgi_server
    sandbox = Sandbox.objects.create(backend="bwrap")
    login(page, base, admin_user)
    page.goto(f"{base}/sandboxes/{sandbox.pk}/")
    native = []
    page.on("dialog", lambda d: native.append(d.message))
    page.click("[data-testid=terminate]")
    dialog = page.locator("[data-testid=confirm-dialog]")
    dialog.wait_for(state="visible")
    assert f"Terminate sandbox {sandbox.pk}?" in dialog.inner_text()
    page.click("[data-testid=confirm-cancel]")
    dialog.wait_for(state="hidden")
    sandbox.refresh_from_db()
    assert sandbox.terminated_at is None and native == []
