"""A campaign's `files:` reach every sandbox read-only at /convoy/files, and never its diffs."""

import pytest

from campaigns.models import RepoRun, RunState, VariantState
from campaigns.services import campaign_create, campaign_launch
from tests.factories import repos_make, runs_final, spec_for

pytestmark = pytest.mark.django_db(transaction=True)

TRANSFORM = "python3 $CONVOY_FILES/fix.py --style $STYLE"
# The mounted path itself, and proof the transform cannot change what it runs.
READS_MOUNT = "python3 /convoy/files/fix.py --style $STYLE && ! echo x >> /convoy/files/fix.py"


@pytest.mark.shapes("embedded", "production")
def test_transform_reads_convoy_files_and_the_diff_leaves_them_out(celery_worker, manager):
    tag, _ = repos_make(1)
    spec = spec_for(tag, name="files-read-only", backend="bwrap")
    assert f"run: {TRANSFORM}" in spec
    campaign = campaign_create(actor=manager, source=spec.replace(TRANSFORM, READS_MOUNT))
    campaign_launch(campaign=campaign, actor=manager)
    runs_final(campaign, timeout=120)
    run = RepoRun.objects.get(campaign=campaign)
    assert run.state == RunState.SUCCEEDED, run.error
    variants = list(run.variants.all())
    assert len(variants) == 3  # forks of the setup sandbox's snapshot: the files came along
    for variant in variants:
        # Completed: the transform read the file and its write to it failed.
        assert variant.state == VariantState.COMPLETED, (variant.name, variant.error)
        assert "+        self.assertEqual(mean([1, 2]), 1.5)" in variant.diff
        paths = {entry["path"] for entry in variant.diffstat}
        assert paths <= {"test_calc.py", "calc.py"}, paths
        assert "fix.py" not in variant.diff and "convoy" not in variant.diff
