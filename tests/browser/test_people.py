"""In Chromium: an admin changes a person's role on the People page; the row updates in place."""

import pytest
from django.contrib.auth.models import User

from accounts.roles import user_role
from accounts.services import user_role_set
from tests.conftest import screenshot
from tests.factories import PASSWORD, user_make
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")


def test_an_admin_changes_a_role_and_the_row_updates_without_a_reload(asgi_server, browser_page):
    user_make(role="admin", username="ada")
    mia = user_make(role="manager", username="mia")
    page = browser_page
    page.goto(f"{asgi_server}/login/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.click("nav >> text=People")
    row = page.locator(f"#person-{mia.pk}")
    row.locator("select").select_option("reviewer")
    page.evaluate("window.__not_reloaded = true")
    row.locator("button:has-text('Set role')").click()
    wait_for(
        lambda: user_role(User.objects.get(pk=mia.pk)) == "reviewer", what="mia made a reviewer"
    )
    # The server's row (its `selected` attribute, which choosing in the browser does not set).
    page.wait_for_selector(f"#person-{mia.pk} option[value=reviewer][selected]", state="attached")
    assert page.evaluate("window.__not_reloaded") is True  # swapped in by htmx, no navigation
    page.locator(f"#person-{mia.pk} button:has-text('Deactivate')").click()
    page.wait_for_selector(f"#person-{mia.pk} >> text=deactivated")
    assert not User.objects.get(pk=mia.pk).is_active
    screenshot(page, "people-admin")


def test_a_refused_role_change_keeps_the_page_and_says_why(asgi_server, browser_page):
    """Demoting the last admin is refused beside the field (the row, swapped by htmx); a
    person whose admin role was taken meanwhile gets the 403 notice in #notices. Both leave
    the People page in place."""
    ada = user_make(role="admin", username="ada")
    mia = user_make(role="manager", username="mia")
    page = browser_page
    page.goto(f"{asgi_server}/login/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.click("nav >> text=People")
    page.evaluate("window.__not_reloaded = true")
    own = page.locator(f"#person-{ada.pk}")
    own.locator("select").select_option("reviewer")
    own.locator("button:has-text('Set role')").click()
    page.wait_for_selector(f"#person-{ada.pk} [data-testid=person-error]")
    assert "admin" in page.inner_text(f"#person-{ada.pk} [data-testid=person-error]").lower()
    assert page.locator("[data-testid=person-row]").count() == 2  # the table is still there
    assert page.is_visible("[data-testid=person-new]")
    assert user_role(User.objects.get(pk=ada.pk)) == "admin"
    screenshot(page, "people-refused-row")
    # Someone else takes ada's admin role; her next change is refused with the 403 notice.
    user_make(role="admin", username="root2")
    ada_user = User.objects.get(pk=ada.pk)
    user_role_set(user=ada_user, role="manager", actor=User.objects.get(username="root2"))
    row = page.locator(f"#person-{mia.pk}")
    row.locator("select").select_option("reviewer")
    row.locator("button:has-text('Set role')").click()
    page.wait_for_selector("#notices [data-testid=error]")
    assert page.is_visible("[data-testid=people]")
    assert page.evaluate("window.__not_reloaded") is True
    assert user_role(User.objects.get(pk=mia.pk)) == "manager"
    screenshot(page, "people-refused-403")
