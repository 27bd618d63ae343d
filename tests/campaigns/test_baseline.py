"""Baseline validation: each variant's result read against the untouched repository.

The end-to-end runs are in test_images.py (a repository whose tests already fail is *still
failing* there); these check the reading itself, the spec switch and where it is shown.
"""

import pytest
from django.urls import reverse

from campaigns.models import Outcome, Validation
from campaigns.reports import run_report
from campaigns.spec import spec_validate
from tests.factories import campaign_make, patch_for, run_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.mark.parametrize(
    ("baseline", "validation", "outcome"),
    [
        (Validation.PASSED, Validation.PASSED, Outcome.PASSES),
        (Validation.FAILED, Validation.PASSED, Outcome.FIXES),
        (Validation.FAILED, Validation.FAILED, Outcome.STILL_FAILING),
        (Validation.PASSED, Validation.FAILED, Outcome.REGRESSES),
        (Validation.NONE, Validation.FAILED, Outcome.FAILS),
        (Validation.NONE, Validation.PASSED, Outcome.PASSES),
        (Validation.PASSED, Validation.SKIPPED, Outcome.NONE),
    ],
)
def test_outcome_against_the_baseline(baseline, validation, outcome):
    assert Outcome.of(baseline=baseline, validation=validation) == outcome


def _raw(**extra) -> dict:
    return {"name": "x", "repos": ["https://example.org/r.git"], "transform": "true", **extra}


def test_baseline_is_on_by_default_and_can_be_switched_off():
    assert spec_validate(_raw())["baseline"] is True
    assert spec_validate(_raw(baseline=False))["baseline"] is False
    with pytest.raises(Exception, match="baseline: must be true or false"):
        spec_validate(_raw(baseline="no"))


def test_run_and_compare_pages_show_the_baseline_and_outcome(client, manager):
    campaign = campaign_make(owner=manager, variants=("a",))
    run = run_make(campaign=campaign)
    run.baseline = Validation.FAILED
    run.baseline_error = "validate[0] exited with 1\n<b>already broken</b>"
    run.save(update_fields=["baseline", "baseline_error"])
    variant_make(run=run, name="a", patch=patch_for("x.py", "a", "b"), validation="failed")
    client.force_login(manager)
    page = client.get(reverse("run-detail", args=[campaign.pk, run.pk])).content.decode()
    assert 'data-testid="baseline"' in page
    assert "&lt;b&gt;already broken&lt;/b&gt;" in page  # output of the repository, escaped
    assert 'data-testid="outcome">still failing<' in page
    compare = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    assert 'data-testid="outcome"' in compare and "still failing" in compare
    body = client.get(f"/api/v1/campaigns/{campaign.pk}/runs/{run.pk}").json()
    assert body["baseline"] == "failed" and body["variants"][0]["outcome"] == "still_failing"
    report = run_report(run)  # what `campaign status --json` prints per repository
    assert report["baseline"] == "failed"
    assert report["variants"][0]["against_baseline"] == "still_failing"
