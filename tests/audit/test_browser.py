"""In Chromium: an admin follows the Audit link, filters the trail, exports it, opens an event,
verifies."""

from pathlib import Path

import pytest

from accounts.management.commands.demo_seed import demo_users_seed
from tests.conftest import screenshot

pytestmark = pytest.mark.shapes("embedded", "production")


def test_admin_searches_the_trail_opens_an_event_and_verifies(asgi_server, browser_page):
    passwords = demo_users_seed()
    page = browser_page
    page.goto(f"{asgi_server}/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", passwords["admin"])
    page.click("button[type=submit]")
    page.click("nav >> text=Audit")
    page.wait_for_selector("h1:has-text('Audit trail')")
    page.fill("[data-testid=audit-q]", "action:people.login.* actor:admin")
    page.click("button:has-text('Search')")
    page.wait_for_url("**q=action*")
    rows = page.locator("[data-testid=audit-row]")
    assert rows.count() == 1
    assert "people.login.succeeded" in rows.first.inner_text()
    screenshot(page, "audit-trail-filtered")
    # The export is a form posting the filter just searched for (a button, not a link).
    with page.expect_download() as download:
        page.click("[data-testid=export-csv]")
    exported = Path(download.value.path()).read_text().splitlines()
    assert len(exported) == 2 and "people.login.succeeded" in exported[1]
    rows.first.locator("a").first.click()
    page.wait_for_selector("[data-testid=audit-json]")
    assert '"display": "admin"' in page.inner_text("[data-testid=audit-json]")
    page.goto(f"{asgi_server}/audit/verify/")
    page.click("[data-testid=verify-now]")
    page.wait_for_selector("[data-testid=verify-ok]")
    screenshot(page, "audit-verified")
