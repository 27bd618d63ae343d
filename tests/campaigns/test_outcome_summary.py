"""Variants against the baseline, counted: the campaign page and `manage.py campaign status`
say how many variants pass, fix, still fail and regress, when the campaign has a baseline."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from campaigns.models import Validation
from tests.browser.support import WIDTHS, axe_report, axe_violations, login, page_overflows
from tests.factories import campaign_make, patch_for, run_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")

PASSED, FAILED, NONE = Validation.PASSED, Validation.FAILED, Validation.NONE

# (the run's baseline, its variants' validations) -> passes 2, fixes 1, still failing 3,
# regresses 4, fails (no baseline) 1; a variant not validated yet counts nowhere.
RUNS = [
    (PASSED, [PASSED, PASSED, FAILED, NONE]),
    (FAILED, [PASSED, FAILED, FAILED]),
    (FAILED, [FAILED]),
    (PASSED, [FAILED, FAILED, FAILED]),
    ("", [FAILED]),
]
EXPECTED = {"passes": 2, "fixes": 1, "still_failing": 3, "regresses": 4, "fails": 1}


def _campaign(owner, *, validate=True, baseline=True):
    campaign = campaign_make(owner=owner, variants=("a", "b", "c", "d"))
    if validate:
        campaign.spec["validate"] = [{"run": "python3 -m unittest -q"}]
    campaign.spec["baseline"] = baseline
    campaign.save(update_fields=["spec"])
    for baseline_result, validations in RUNS:
        run = run_make(campaign=campaign)
        run.baseline = baseline_result
        run.save(update_fields=["baseline"])
        for i, validation in enumerate(validations):
            patch = patch_for("x.py", "a", f"b{i}")
            variant_make(run=run, name="abcd"[i], position=i, patch=patch, validation=validation)
    return campaign


def _status(campaign, *args) -> str:
    out = StringIO()
    call_command("campaign", "status", campaign.name, *args, "--user", "mia", stdout=out)
    return out.getvalue()


def test_campaign_page_counts_variants_against_the_baseline(client, manager):
    campaign = _campaign(manager)
    client.force_login(manager)
    page = client.get(reverse("campaign-detail", args=[campaign.pk])).content.decode()
    assert 'data-testid="baseline-outcomes"' in page
    assert "<caption>Against the baseline" in page
    for outcome, n in EXPECTED.items():
        assert f'data-testid="baseline-{outcome}">{n}<' in page
    for label in ("passes", "fixes", "still failing", "regresses", "fails (no baseline)"):
        assert f'<th scope="col">{label}</th>' in page
    # the live partial the page polls while the campaign runs carries the same counts
    live = client.get(
        reverse("campaign-detail", args=[campaign.pk]),
        headers={"HX-Request": "true", "HX-Target": "campaign-live"},
    ).content.decode()
    assert "<html" not in live and 'data-testid="baseline-regresses">4<' in live


def test_campaign_status_prints_the_counts(manager):
    campaign = _campaign(manager)
    text = _status(campaign)
    assert (
        "against the baseline: passes 2, fixes 1, still failing 3, regresses 4, "
        "fails (no baseline) 1"
    ) in text
    body = json.loads(_status(campaign, "--json"))
    assert body["against_baseline"] == EXPECTED


def test_zero_counts_are_shown_and_fails_only_when_some(client, manager):
    campaign = campaign_make(owner=manager, variants=("a",))
    campaign.spec["validate"] = [{"run": "true"}]
    campaign.save(update_fields=["spec"])
    run = run_make(campaign=campaign)
    run.baseline = PASSED
    run.save(update_fields=["baseline"])
    variant_make(run=run, name="a", patch=patch_for("x.py", "a", "b"), validation=PASSED)
    assert "against the baseline: passes 1, fixes 0, still failing 0, regresses 0\n" in (
        _status(campaign)
    )
    client.force_login(manager)
    page = client.get(reverse("campaign-detail", args=[campaign.pk])).content.decode()
    assert 'data-testid="baseline-regresses">0<' in page
    assert "fails (no baseline)" not in page


@pytest.mark.parametrize("spec", [{"validate": False}, {"baseline": False}])
def test_no_summary_without_validate_steps_or_with_baseline_off(client, manager, spec):
    campaign = _campaign(manager, **spec)
    client.force_login(manager)
    page = client.get(reverse("campaign-detail", args=[campaign.pk])).content.decode()
    assert 'data-testid="runs"' in page  # the page itself rendered
    assert "baseline-outcomes" not in page and "Against the baseline" not in page
    text = _status(campaign)
    assert "repo-" in text and "against the baseline" not in text
    assert json.loads(_status(campaign, "--json"))["against_baseline"] == {}


def test_a_large_campaign_counts_them_when_asked(client, manager, monkeypatch):
    monkeypatch.setattr("campaigns.views.BASELINE_INLINE_RUNS", 4)  # this campaign has 5 runs
    campaign = _campaign(manager)
    client.force_login(manager)
    url = reverse("campaign-detail", args=[campaign.pk])
    page = client.get(url).content.decode()
    assert 'data-testid="baseline-show"' in page and "Show outcomes against the baseline" in page
    assert 'data-testid="baseline-outcomes"' not in page  # not counted on every poll
    live = client.get(url, headers={"HX-Request": "true", "HX-Target": "campaign-live"})
    assert "baseline-" not in live.content.decode()
    shown = client.get(url, headers={"HX-Request": "true", "HX-Target": "baseline-outcomes"})
    html = shown.content.decode()
    assert "<html" not in html and 'id="baseline-outcomes"' in html
    for outcome, n in EXPECTED.items():
        assert f'data-testid="baseline-{outcome}">{n}<' in html
    assert "Count again" in html


def test_the_counts_have_no_axe_violation(asgi_server, browser_page, manager):
    campaign = _campaign(manager)
    page, base = browser_page, asgi_server
    login(page, base, manager)
    page.goto(f"{base}/campaigns/{campaign.pk}/")
    page.wait_for_selector("[data-testid=baseline-outcomes]")
    for width, (w, h) in WIDTHS.items():
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_selector(f"html[data-tables-width='{w}']", state="attached")
        violations = axe_violations(page)
        assert not violations, axe_report(violations)
        assert not (page_overflows(page) if width == "phone" else [])
    assert page.inner_text("[data-testid=baseline-regresses]") == "4"
