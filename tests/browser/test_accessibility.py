"""Every page at 1280 px and 390 px in Chromium: axe-core finds no violation, the page never
scrolls sideways (tables scroll in their own box), and a screenshot of each is kept under
artifacts/screenshots/."""

import uuid

import pytest

from audit.models import AuditEvent
from campaigns.models import RunState, VariantState
from review.services import variant_pick
from sandboxes.models import Sandbox
from tests.browser.support import WIDTHS, axe_report, axe_violations, login, page_overflows, shot
from tests.factories import campaign_make, patch_for, run_make, user_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")


def _campaign(manager, reviewer):
    """A finished campaign with something on every review page: groups, a failure, a pick."""
    campaign = campaign_make(owner=manager, variants=("conservative", "aggressive"))
    runs = []
    for i in range(4):
        run = run_make(campaign=campaign, base_commit="0" * 40)
        change = "new()" if i < 3 else "newer()"
        variant_make(run=run, name="conservative", patch=patch_for("src/app.py", "old()", change))
        variant_make(
            run=run,
            name="aggressive",
            position=1,
            patch=patch_for("src/app.py", "old()", "gone()"),
            validation="failed",
            output_tail="E   AssertionError: 1 != 2",
        )
        runs.append(run)
    failed = run_make(campaign=campaign, state=RunState.FAILED)
    failed.error = "setup[0] `pip install -e .` exited with 1\nERROR: no setup.py"
    failed.error_signature, failed.error_summary = "abc123", "setup failed"
    failed.save()
    variant_make(run=failed, name="conservative", patch=b"", state=VariantState.FAILED)
    first = runs[0].variants.get(name="conservative")
    variant_pick(run=runs[0], variant=first, actor=reviewer, diff_hash=first.diff_sha256)
    sandbox = Sandbox.objects.create(
        backend="bwrap", owner_kind="run", owner_id=failed.pk, campaign_id=campaign.pk
    )
    return campaign, runs[0], failed, sandbox


def _pages(campaign, run, failed, sandbox) -> list[tuple[str, str]]:
    c = campaign.pk
    event = AuditEvent.objects.order_by("-id").first()
    return [
        ("home", "/"),
        ("campaigns", "/campaigns/"),
        ("campaign-new", "/campaigns/new/"),
        ("campaign", f"/campaigns/{c}/"),
        ("run", f"/campaigns/{c}/runs/{run.pk}/"),
        ("run-failed", f"/campaigns/{c}/runs/{failed.pk}/"),
        ("secrets", "/campaigns/secrets/"),
        ("review-dashboard", f"/campaigns/{c}/dashboard/"),
        ("review-queue", f"/campaigns/{c}/review/"),
        ("review-compare", f"/campaigns/{c}/runs/{run.pk}/compare/"),
        ("review-compare-split", f"/campaigns/{c}/runs/{run.pk}/compare/?mode=split"),
        ("review-bulk", f"/campaigns/{c}/review/bulk/"),
        ("changesets", f"/campaigns/{c}/changesets/"),
        ("sandboxes", "/sandboxes/"),
        ("sandbox", f"/sandboxes/{sandbox.pk}/"),
        ("sandbox-backends", "/sandboxes/backends/"),
        ("audit", "/audit/"),
        ("audit-event", f"/audit/events/{event.event_id}/"),
        ("audit-verify", "/audit/verify/"),
        ("people", "/people/"),
        ("password", "/account/password/"),
        ("campaign-edit", f"/campaigns/{c}/edit/"),
        ("backends", "/sandboxes/backends/"),
        ("images", "/images/"),
        ("model-providers", "/agents/providers/"),
        ("audit-campaign", f"/audit/campaigns/{c}/"),
        ("audit-sandbox", f"/audit/sandboxes/{sandbox.pk}/"),
        ("not-found", f"/campaigns/{c}/runs/999999/compare/"),
    ]


def _check(page, name: str, failures: list[str]) -> None:
    page.wait_for_load_state("load")
    for width, (w, h) in WIDTHS.items():
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_selector(f"html[data-tables-width='{w}']", state="attached")
        shot(page, f"{name}-{w}")
        violations = axe_violations(page)
        if violations:
            failures.append(f"{name} at {w} px ({page.url}):\n{axe_report(violations)}")
        wide = page_overflows(page) if width == "phone" else []
        if wide:
            failures.append(f"{name} at {w} px scrolls sideways because of: {wide}")


def test_every_page_has_no_axe_violation_at_desktop_and_phone_widths(
    asgi_server, browser_page, manager, reviewer
):
    page, base = browser_page, asgi_server
    admin = user_make(role="admin", username=f"adm{uuid.uuid4().hex[:4]}")
    campaign, run, failed, sandbox = _campaign(manager, reviewer)
    failures: list[str] = []
    errors: list[str] = []  # uncaught exceptions and console errors (CSP refusals among them)
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"{page.url}: {msg.text}") if msg.type == "error" else None,
    )
    page.goto(f"{base}/login/")
    _check(page, "login", failures)
    login(page, base, admin)
    for name, path in _pages(campaign, run, failed, sandbox):
        page.goto(f"{base}{path}")
        _check(page, name, failures)
    # A refusal in the site's layout: a reviewer may not open People.
    login(page, base, reviewer)
    page.goto(f"{base}/people/")
    assert page.is_visible("[data-testid=error-page]")
    _check(page, "forbidden", failures)
    assert not failures, "\n\n".join(failures)
    # The 404 and 403 pages log their status in the console; anything else is a fault.
    errors = [e for e in errors if "status of 403" not in e and "status of 404" not in e]
    assert not errors, "\n".join(errors)


def test_the_navigation_collapses_behind_a_menu_on_a_phone(asgi_server, browser_page, reviewer):
    page, base = browser_page, asgi_server
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, base, reviewer)
    assert not page.is_visible("nav.nav")
    page.click("[data-nav-toggle]")
    assert page.is_visible("nav.nav >> text=Campaigns")
    assert page.get_attribute("[data-nav-toggle]", "aria-expanded") == "true"
    shot(page, "nav-open-390")


def test_the_text_to_publish_beside_approve_fits_a_phone(
    asgi_server, browser_page, manager, reviewer
):
    """Long unbroken titles, messages and authors wrap inside the card at 390 px; the body
    opens from its summary; axe-core finds nothing."""
    long = "Use" + "AssertEqual" * 30
    campaign = campaign_make(
        owner=manager,
        variants=("only",),
        changeset={
            "branch": "convoy/long",
            "title": long,
            "commit_message": f"{long}\n\nBody line " + "x" * 300,
            "body": "Why: " + "y" * 400,
            "author": f"{'N' * 80} <{'e' * 60}@example.com>",
        },
    )
    run = run_make(campaign=campaign)
    variant_make(run=run, name="only", patch=patch_for("a.py", "old()", "new()"))
    page, base = browser_page, asgi_server
    login(page, base, reviewer)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base}/campaigns/{campaign.pk}/runs/{run.pk}/compare/")
    page.wait_for_selector("[data-testid=publish-text]")
    assert page.is_visible("[data-testid=publish-title]")
    assert not page.is_visible("[data-testid=publish-body] pre")  # collapsed
    page.click("[data-testid=publish-body] summary")
    assert page.is_visible("[data-testid=publish-body] pre")
    shot(page, "publish-text-390")
    assert page_overflows(page) == []
    # Wrapped, not cut off or scrolled inside the card: every line of it can be read.
    hidden = page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=publish-text] *')]
            .filter(el => el.scrollWidth > el.clientWidth + 1
                       || el.getBoundingClientRect().right > innerWidth)
            .map(el => el.tagName + ' ' + (el.dataset.testid || ''))"""
    )
    assert hidden == []
    assert axe_violations(page) == []
