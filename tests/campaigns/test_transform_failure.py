"""A failing transform step ends its variant failed (not left running) with the step named."""

import pytest

from campaigns.models import RepoRun, Variant, VariantState
from campaigns.services import campaign_create, campaign_launch
from tests.factories import campaign_completed, repos_make, spec_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.shapes("embedded", "production")
def test_a_failing_transform_step_fails_its_variant(celery_worker, manager):
    tag, _ = repos_make(1)
    spec = spec_for(tag, name="transform-fails")
    spec = spec.replace(
        "  run: python3 $CONVOY_FILES/fix.py --style $STYLE", "  run: echo broken >&2; exit 3"
    )
    campaign = campaign_launch(campaign=campaign_create(actor=manager, source=spec), actor=manager)
    campaign_completed(campaign, timeout=120)
    assert RepoRun.objects.filter(campaign=campaign).count() == 1
    variants = list(Variant.objects.filter(run__campaign=campaign))
    assert len(variants) == 3
    for v in variants:
        assert v.state == VariantState.FAILED, (v.name, v.state)
        assert "transform[0]" in v.error and "broken" in v.output_tail
        assert v.finished_at is not None


@pytest.mark.shapes("embedded", "production")
def test_output_with_a_nul_byte_ends_the_run_with_its_result(celery_worker, manager):
    """PostgreSQL text cannot hold NUL: a failing setup that printed one left its run running
    (then retried and failed the same way, for ever), and a validation that printed one lost
    its result. NUL is shown as its symbol, like the log."""
    tag, _ = repos_make(2)
    failing = spec_for(tag, name="nul-setup")
    failing = failing.replace("  - run: test -f calc.py", "  - run: printf 'x\\000y'; exit 1")
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=failing), actor=manager
    )
    campaign_completed(campaign, timeout=120)
    for run in RepoRun.objects.filter(campaign=campaign):
        assert run.state == "failed" and "x\u2400y" in run.error, run.error

    validating = spec_for(tag, name="nul-validate")
    validating = validating.replace(
        "  - run: PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q",
        "  - run: printf 'x\\000y'; exit 3",
    )
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=validating), actor=manager
    )
    campaign_completed(campaign, timeout=120)
    variants = list(Variant.objects.filter(run__campaign=campaign))
    assert len(variants) == 6
    for v in variants:
        assert v.validation == "failed" and "x\u2400y" in v.output_tail, (v.validation, v.error)
