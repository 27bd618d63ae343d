"""The run page links onwards: the comparison, each variant's log (setup failures too), each
diff, and it marks the step that failed."""

import pytest
from django.urls import reverse

from campaigns.models import Campaign, RunState, VariantState
from sandboxes.models import Sandbox
from tests.factories import PASSWORD, campaign_make, patch_for, run_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")


def _with_steps(campaign: Campaign) -> Campaign:
    campaign.spec = {
        **campaign.spec,
        "setup": [{"run": "pip install -e ."}],
        "transform": [{"run": "sed -i s/a/b/ x.py"}, {"run": "ruff format ."}],
        "validate": [{"run": "pytest -q"}],
    }
    campaign.save(update_fields=["spec"])
    return campaign


def test_a_setup_failure_links_its_log_and_marks_the_setup_step(client, manager):
    campaign = _with_steps(campaign_make(owner=manager, variants=("a",)))
    run = run_make(campaign=campaign, state=RunState.FAILED)
    run.error = "setup[0] `pip install -e .` exited with 1\nERROR: no setup.py"
    run.save(update_fields=["error"])
    setup = Sandbox.objects.create(
        backend="bwrap", owner_kind="run", owner_id=run.pk, campaign_id=campaign.pk
    )
    assert client.login(username=manager.username, password=PASSWORD)
    html = client.get(reverse("run-detail", args=[campaign.pk, run.pk])).content.decode()
    assert reverse("sandbox-detail", args=[setup.pk]) in html
    assert 'data-testid="failing-step"' in html
    failing = html.split('data-testid="failing-step"')[1].split("</li>")[0]
    assert "setup[0]" in failing and "pip install -e ." in failing


def test_variants_link_their_log_diff_and_comparison_and_mark_the_failing_step(client, manager):
    campaign = _with_steps(campaign_make(owner=manager, variants=("a", "b")))
    run = run_make(campaign=campaign)
    ok = variant_make(run=run, name="a", patch=patch_for("x.py", "a", "b"))
    broken = variant_make(
        run=run,
        name="b",
        position=1,
        patch=b"",
        state=VariantState.FAILED,
        error="transform[1] `ruff format .` exited with 2\nerror: cannot format",
    )
    log = Sandbox.objects.create(
        backend="bwrap", owner_kind="variant", owner_id=broken.pk, campaign_id=campaign.pk
    )
    assert client.login(username=manager.username, password=PASSWORD)
    html = client.get(reverse("run-detail", args=[campaign.pk, run.pk])).content.decode()
    compare = reverse("review-compare", args=[campaign.pk, run.pk])
    assert f'href="{compare}"' in html
    assert f"{compare}?variant={ok.pk}#viewer" in html  # the diff of the variant that made one
    assert reverse("sandbox-detail", args=[log.pk]) in html  # failed before recording sandbox_id
    (failing,) = html.split('data-testid="failing-step"')[1:]
    assert "transform[1]" in failing.split("</li>")[0]


def test_the_run_page_shows_the_start_of_a_large_diff_and_links_the_whole(client, manager):
    """Every variant's whole patch was written into the run page: four 6 MB diffs made a 28 MB
    page (a spec allows 20 variants of 100 MB). The start is shown, the compare page has it all."""
    campaign = campaign_make(owner=manager, variants=("a", "b"))
    run = run_make(campaign=campaign)
    big = patch_for("big.txt", "old", "new" + "x" * 3_000_000)
    for i, name in enumerate(("a", "b")):
        variant_make(run=run, name=name, patch=big, position=i)
    assert client.login(username=manager.username, password=PASSWORD)
    response = client.get(reverse("run-detail", args=[campaign.pk, run.pk]))
    assert response.status_code == 200
    assert len(response.content) < 1_000_000
    html = response.content.decode()
    assert html.count('data-testid="diff-cut"') == 2
    assert "diff --git a/big.txt b/big.txt" in html
