"""A campaign's image build that dies: the run fails with the field, no half image is left for
a later run or campaign, and the campaign's other runs fail at once instead of building again
(a retry builds again). The build is stopped by the builder's step hook before mmdebstrap."""

import pytest

from campaigns.environment import run_image
from campaigns.states import RunFailed
from sandboxes.images import build
from sandboxes.images.build import images_root
from sandboxes.models import Image, ImageState
from tests.factories import campaign_make, run_make

pytestmark = pytest.mark.shapes("embedded", "production")

SPEC = {"image": {"apt": ["python3-venv"], "pip": ["pytest"]}}


class Crash(Exception):
    pass


def _crash(step: str) -> None:
    raise Crash(f"killed during {step}")


def test_a_crashed_build_fails_runs_once_and_leaves_no_image(
    db, settings, tmp_path, manager, monkeypatch
):
    settings.DATA_DIR = tmp_path
    monkeypatch.setattr(build, "STEP_HOOK", _crash)
    campaign = campaign_make(owner=manager)
    first, second = run_make(campaign=campaign), run_make(campaign=campaign)
    with pytest.raises(Crash):
        run_image(run=first, spec=SPEC, actor=manager)
    image = Image.objects.get()
    assert image.state == ImageState.FAILED and image.builds == 1
    assert not any(images_root().glob("*/manifest.json"))  # nothing a later run could use
    assert not any(images_root().glob(".building-*"))
    with pytest.raises(RunFailed, match="image build failed: image: build interrupted"):
        run_image(run=second, spec=SPEC, actor=manager)
    assert Image.objects.get().builds == 1  # the second run did not build again
    second.attempt = 2  # a retry builds again
    with pytest.raises(Crash):
        run_image(run=second, spec=SPEC, actor=manager)
    assert Image.objects.get().builds == 2
