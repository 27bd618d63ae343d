"""Campaigns on their own images, end to end with the real worker (issue 16).

`image: {apt: [python3-venv], pip: [pytest]}` over generated Python repositories: validation
runs the image's `pytest`; a second campaign with the same image does not build it again; a
virtualenv made in setup under /convoy/home is carried into every fork and never in the diff;
`diff.exclude` and `limits.max_diff_mb` hold; a repository whose tests already failed is
*still failing*, not *regresses*. A campaign with `image.oci` pulls from a registry on
127.0.0.1 that the test started and pushed to.
"""

import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from audit.models import AuditEvent
from campaigns.demo import demo_repos_create
from campaigns.environment import image_keys_in_use, images_prune
from campaigns.models import Outcome, RepoRun, RunState, Validation, VariantState
from campaigns.services import campaign_create, campaign_launch, repositories_register
from sandboxes.images.build import image_dir
from sandboxes.models import Image, ImageState, Sandbox
from tests.factories import campaign_completed, campaign_make, git, run_make
from tests.sandboxes.images.conftest import oci_registry  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

BROKEN = "def test_already_broken():\n    assert 1 + 1 == 3\n"


def _python_repos(count: int, *, broken: int, tag: str) -> list[Path]:
    """Demo repositories (unittest tests pytest also runs); the `broken` one has a test that
    fails before any change."""
    paths = demo_repos_create(Path(settings.REPO_ROOTS[0]) / tag, count)
    (paths[broken] / "test_broken.py").write_text(BROKEN)
    git(paths[broken], "add", "test_broken.py")
    git(paths[broken], "-c", "user.name=T", "-c", "user.email=t@x", "commit", "-qm", "broken")
    repositories_register(
        entries=[{"url": f"file://{p}", "ref": "main"} for p in paths], tags=[tag], actor=None
    )
    return paths


def _spec(tag: str, backend: str, *, name: str, image: str, huge: bool = False) -> str:
    huge_variant = (
        "  - name: huge\n    transform: head -c 3000000 /dev/urandom | base64 > blob.txt\n"
        if huge
        else ""
    )
    return f"""\
name: {name}
backend: {backend}
repos: {{tag: {tag}}}
image: {image}
limits: {{timeout_s: 600, memory_mb: 1024, max_diff_mb: 1}}
diff: {{exclude: [build/]}}
setup:
  - run: python3 -m venv $HOME/venv && mkdir -p build && echo generated > build/out.txt
transform:
  run: sed -i 's/assertEquals(/assertEqual(/' test_calc.py
variants:
  - name: standard
{huge_variant}validate:
  - run: test -x $HOME/venv/bin/python && test "$HOME" = /convoy/home
  - run: pytest -q -p no:cacheprovider
"""


def _launch(manager, spec: str):
    return campaign_launch(campaign=campaign_create(actor=manager, source=spec), actor=manager)


def _assert_python_campaign(campaign, *, broken_name: str, huge: bool) -> None:
    runs = list(RepoRun.objects.filter(campaign=campaign).select_related("repository"))
    assert {r.state for r in runs} == {RunState.SUCCEEDED}, [(r.state, r.error) for r in runs]
    for run in runs:
        variant = run.variants.select_related("run").get(name="standard")
        assert variant.state == VariantState.COMPLETED, variant.error
        # Only the transform's change: not the virtualenv under /convoy/home, not build/.
        assert [d["path"] for d in variant.diffstat] == ["test_calc.py"], variant.diffstat
        assert ".convoy-home" not in variant.diff and "venv" not in variant.diff
        commands = Sandbox.objects.get(pk=variant.sandbox_id).commands.all()
        assert commands.filter(argv__contains=["pytest -q -p no:cacheprovider"]).exists()
        if run.repository.name == broken_name:
            assert run.baseline == Validation.FAILED
            assert "test_already_broken" in run.baseline_error
            assert variant.validation == Validation.FAILED
            assert variant.outcome == Outcome.STILL_FAILING
        else:
            assert run.baseline == Validation.PASSED, run.baseline_error
            assert variant.validation == Validation.PASSED, variant.output_tail
            assert variant.outcome == Outcome.PASSES
        if huge:
            big = run.variants.get(name="huge")
            assert big.state == VariantState.FAILED
            assert "over limits.max_diff_mb (1 MB)" in big.error
            assert not big.patch
        assert run.image_key
    assert len({r.image_key for r in runs}) == 1
    # Every sandbox of the campaign ran on the image (recorded by key).
    keys = set(Sandbox.objects.filter(campaign_id=campaign.pk).values_list("image", flat=True))
    assert keys == {runs[0].image_key}


PY_IMAGE = "{apt: [python3-venv], pip: [pytest]}"


@pytest.mark.slow
def test_python_campaigns_on_an_image_bwrap(package_index_env, celery_worker, manager):
    tag = "imgbw"
    paths = _python_repos(3, broken=2, tag=tag)
    first = _launch(manager, _spec(tag, "bwrap", name="img-first", image=PY_IMAGE, huge=True))
    campaign_completed(first, timeout=900)
    _assert_python_campaign(first, broken_name=paths[2].name, huge=True)
    image = Image.objects.get()
    assert image.state == ImageState.READY and image.builds == 1
    built = AuditEvent.objects.filter(action="sandbox.image.built").count()

    second = _launch(manager, _spec(tag, "bwrap", name="img-second", image=PY_IMAGE))
    campaign_completed(second, timeout=300)
    _assert_python_campaign(second, broken_name=paths[2].name, huge=False)
    image.refresh_from_db()
    assert image.builds == 1  # the second campaign used the image as it was
    assert AuditEvent.objects.filter(action="sandbox.image.built").count() == built


@pytest.mark.slow
def test_python_campaign_on_an_image_gvisor(package_index_env, celery_worker, manager):
    tag = "imggv"
    paths = _python_repos(2, broken=1, tag=tag)
    campaign = _launch(manager, _spec(tag, "gvisor", name="img-gvisor", image=PY_IMAGE))
    campaign_completed(campaign, timeout=900)
    _assert_python_campaign(campaign, broken_name=paths[1].name, huge=False)


@pytest.mark.slow
def test_campaign_on_an_oci_image_from_a_local_registry(
    package_index_env,
    oci_registry,  # noqa: F811 (before the worker: it lists the registry in its environment)
    celery_worker,
    manager,
):
    """The test pushes an image (a Debian root filesystem with python3 and git, made by
    mmdebstrap) to its registry; the campaign pulls it with skopeo and umoci and runs on it."""
    rootfs = oci_registry.root / "rootfs"
    subprocess.run(
        ["mmdebstrap", "--variant=apt", "--include=python3,git", "--format=directory",
         "--quiet", "bookworm", str(rootfs)],
        check=True,
    )  # fmt: skip
    (rootfs / "etc" / "convoy-oci-marker").write_text("pushed by the test\n")
    ref = oci_registry.push_tree("team/python", rootfs, tag="3.11")
    tag = "imgoci"
    _python_repos(2, broken=1, tag=tag)
    spec = f"""\
name: img-oci
backend: bwrap
repos: {{tag: {tag}}}
image: {{oci: "{ref}"}}
transform:
  run: sed -i 's/assertEquals(/assertEqual(/' test_calc.py
validate:
  - run: test -f /etc/convoy-oci-marker
  - run: python3 -m unittest -q test_calc
"""
    campaign = _launch(manager, spec)
    campaign_completed(campaign, timeout=600)
    runs = list(RepoRun.objects.filter(campaign=campaign))
    assert {r.state for r in runs} == {RunState.SUCCEEDED}, [r.error for r in runs]
    for run in runs:
        variant = run.variants.get()
        assert variant.validation == Validation.PASSED, variant.output_tail
        assert [d["path"] for d in variant.diffstat] == ["test_calc.py"]
    image = Image.objects.get(key=runs[0].image_key)
    assert image.kind == "oci" and image.spec["oci"] == ref


def test_prune_spares_images_in_use_and_removes_the_rest(manager, settings, tmp_path):
    """An image a running campaign's run names is kept; once its campaign is finished and no
    sandbox uses it, prune removes it (row and files)."""
    settings.DATA_DIR = tmp_path
    used, unused = "a" * 64, "b" * 64
    for key in (used, unused):
        Image.objects.create(key=key, kind="debian", spec={}, state=ImageState.READY)
        (image_dir(key) / "rootfs").mkdir(parents=True)
    campaign = campaign_make(owner=manager)
    campaign.state = "running"
    campaign.save(update_fields=["state"])
    run = run_make(campaign=campaign, state=RunState.RUNNING)
    RepoRun.objects.filter(pk=run.pk).update(image_key=used)
    assert used in image_keys_in_use()
    assert images_prune(actor=None) == [unused]
    assert not image_dir(unused).exists() and image_dir(used).exists()
    campaign.state = "completed"
    campaign.save(update_fields=["state"])
    RepoRun.objects.filter(pk=run.pk).update(state=RunState.SUCCEEDED)
    Sandbox.objects.create(backend="bwrap", image=used, state="running")
    assert images_prune(actor=None) == []  # a live sandbox still uses it
    Sandbox.objects.filter(image=used).update(state="terminated")
    assert images_prune(actor=None) == [used]
    assert not Image.objects.exists()
