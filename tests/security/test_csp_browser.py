"""In Chromium, under the Content-Security-Policy: htmx loads and swaps, and no page of the
tour reports a policy violation."""

import pytest

from tests.factories import PASSWORD, campaign_make, user_make

pytestmark = pytest.mark.shapes("embedded", "production")


def test_htmx_works_and_nothing_violates_the_policy(asgi_server, browser_page):
    ada = user_make(role="admin", username="ada")
    mia = user_make(role="manager", username="mia")
    campaign = campaign_make(owner=mia)
    page = browser_page
    violations = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.goto(f"{asgi_server}/login/")
    page.fill("#id_username", ada.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=whoami]")
    for path in ("/", "/campaigns/", f"/campaigns/{campaign.pk}/", "/campaigns/secrets/",
                 "/account/password/", "/people/"):  # fmt: skip
        page.goto(f"{asgi_server}{path}")
        assert page.evaluate("typeof htmx") == "object", path
    page.evaluate("window.__not_reloaded = true")
    row = page.locator(f"#person-{mia.pk}")
    row.locator("select").select_option("reviewer")
    row.locator("button:has-text('Set role')").click()
    page.wait_for_selector(f"#person-{mia.pk} option[value=reviewer][selected]", state="attached")
    assert page.evaluate("window.__not_reloaded") is True  # an htmx swap, not a navigation
    assert violations == []
