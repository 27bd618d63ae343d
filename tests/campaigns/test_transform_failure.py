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
