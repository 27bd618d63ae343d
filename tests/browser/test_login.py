"""In Chromium: the demo manager signs in and sees the dashboard."""

import pytest

from accounts.management.commands.demo_seed import demo_users_seed
from tests.conftest import screenshot

pytestmark = pytest.mark.shapes("embedded", "production")


def test_demo_manager_logs_in_and_sees_dashboard(asgi_server, browser_page):
    passwords = demo_users_seed()
    page = browser_page
    page.goto(f"{asgi_server}/")
    assert "/login/" in page.url
    page.fill("#id_username", "manager")
    page.fill("#id_password", "wrong-password")
    page.click("button[type=submit]")
    assert "correct username and password" in page.inner_text("[data-testid=login-error]")
    page.fill("#id_username", "manager")
    page.fill("#id_password", passwords["manager"])
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Dashboard')")
    assert page.inner_text("[data-testid=role]") == "manager"
    assert page.evaluate("typeof htmx") == "object"  # htmx served by our own app, no CDN
    screenshot(page, "dashboard-manager")
