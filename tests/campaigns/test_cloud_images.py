"""Campaign images on the cloud backends: the campaign's `image:` reaches the provider as its
own image builder (a `modal.Image` chain, a Daytona `Image`), with the tools area and the
run's image key as on the local backends; a campaign without `image:` keeps the engine's
default image.

The provider's SDK is its fake (FakeModal, FakeDaytona: the clouds cannot be reached from
here); everything else is real: the shape's database and broker, the campaign services, a
Celery worker consuming the queue (in the test process, where the fake lives), the pipeline.
"""

import daytona
import pytest

from campaigns.demo import DEMO_TAG
from campaigns.environment import engine_image_key
from campaigns.models import RepoRun, RunState, Variant
from campaigns.secret_grants import secret_grant
from campaigns.secrets import secret_set
from campaigns.services import campaign_create, campaign_launch
from sandboxes.backends.base import SandboxError, SandboxSpec
from sandboxes.images.spec import image_spec_parse
from sandboxes.models import Sandbox
from tests.campaigns.test_backend_choice import demo_spec_on
from tests.factories import campaign_completed, repos_make
from tests.sandboxes.fake_cloud import cloud_fake_installed, fake_running
from tests.sandboxes.fake_daytona import daytona_fake_backend
from tests.sandboxes.fake_modal import modal_fake_backend

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.slow]

IMAGE = "image: {base: 'debian:bookworm', apt: [ripgrep], pip: [libcst], env: {GREETING: hello}}"
# The setup sees the image's variables and writes to the tools area ($HOME); a variant's
# validation finds the tools area again in its fork, and the file is never in the diff.
TOOLS_SETUP = """\
setup:
  - run: test -f calc.py
  - run: test "$GREETING" = hello && test "$HOME" = /convoy/home && echo warm > $HOME/cache.txt
"""
TOOLS_VALIDATE = """\
validate:
  - run: test -f $HOME/cache.txt
  - run: PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q
"""


@pytest.fixture
def worker_in_process(transactional_db):
    """A real Celery worker (threads pool) on this shape's broker, inside the test process."""
    from config.embedded import embedded_worker_start

    worker = embedded_worker_start(beat=False, concurrency=2)
    yield worker
    worker.stop()


def _spec_with_image(backend: str, image: str = IMAGE) -> str:
    spec = demo_spec_on(backend).replace("\nrepos:", f"\n{image}\nrepos:", 1)
    spec = spec.replace("setup:\n  - run: test -f calc.py\n", TOOLS_SETUP, 1)
    old_validate = "validate:\n  - run: PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q\n"
    assert old_validate in spec
    return spec.replace(old_validate, TOOLS_VALIDATE, 1)


def _run_campaign(manager, source: str, repos: int):
    repos_make(repos, tag=DEMO_TAG)
    campaign = campaign_create(actor=manager, source=source)
    campaign_launch(campaign=campaign, actor=manager)
    campaign_completed(campaign, timeout=240)
    runs = list(RepoRun.objects.filter(campaign=campaign))
    assert {run.state for run in runs} == {RunState.SUCCEEDED}, [r.error for r in runs]
    return campaign, runs


def test_modal_campaign_runs_on_its_image_built_by_modal(
    tmp_path, monkeypatch, manager, worker_in_process
):
    with cloud_fake_installed("modal", tmp_path / "modal", monkeypatch) as engine:
        campaign, runs = _run_campaign(manager, _spec_with_image("modal"), repos=2)

        fake = engine.fake
        images = [c["image"] for c in fake.called("Sandbox.create") if c["image"].files is None]
        assert len(images) == 2  # one sandbox from the image per run; the rest are forks
        assert len({id(image) for image in images}) == 1, "the chain was declared per run"
        image = images[0]
        assert image.steps == ["debian_slim", "apt_install", "pip_install", "env"]
        chain = {name: args for name, args, _ in image.chain}
        assert {"ripgrep", "git"} <= set(chain["apt_install"])
        assert chain["pip_install"] == ("libcst",)
        assert image.env_vars["GREETING"] == "hello"
        assert image.env_vars["PATH"].startswith("/opt/convoy-venv/bin:")

        key = engine_image_key(image_spec_parse(campaign.spec["image"]), backend="modal")
        assert {run.image_key for run in runs} == {key}
        assert set(
            Sandbox.objects.filter(campaign_id=campaign.pk).values_list("image", flat=True)
        ) == {key}
        variants = Variant.objects.filter(run__campaign=campaign)
        assert variants.exists()
        assert all("cache.txt" not in v.diff for v in variants)
        assert any("assertEqual(" in v.diff for v in variants)
        assert not fake_running(engine)


def test_modal_campaign_without_image_keeps_the_default_image(
    tmp_path, monkeypatch, manager, worker_in_process
):
    with cloud_fake_installed("modal", tmp_path / "modal", monkeypatch) as engine:
        _, runs = _run_campaign(manager, demo_spec_on("modal"), repos=1)

        creates = [c for c in engine.fake.called("Sandbox.create") if c["image"].files is None]
        assert [c["image"].steps for c in creates] == [["from_registry"]]
        assert creates[0]["image"].tag == SandboxSpec().image
        assert [run.image_key for run in runs] == [""]


def test_modal_campaign_on_a_private_oci_image_pulls_with_a_modal_secret(
    tmp_path, monkeypatch, manager, admin_user, worker_in_process, settings
):
    settings.LOCAL_REGISTRIES = ["127.0.0.1:5000"]  # as an operator lists it (a fake: no request)
    secret_set(name="REGISTRY_LOGIN", value="robot:s3cret-pass", actor=admin_user)
    secret_grant(name="REGISTRY_LOGIN", manager=manager, actor=admin_user)
    image = (
        "image: {oci: '127.0.0.1:5000/team/python:3.12', credentials_secret: REGISTRY_LOGIN, "
        "pip: [libcst], env: {GREETING: hello}}"
    )
    with cloud_fake_installed("modal", tmp_path / "modal", monkeypatch) as engine:
        _run_campaign(manager, _spec_with_image("modal", image), repos=1)

        creates = [c for c in engine.fake.called("Sandbox.create") if c["image"].files is None]
        [start, *_] = creates[0]["image"].chain
        assert start[0] == "from_registry"
        assert start[1] == ("127.0.0.1:5000/team/python:3.12",)
        secret = start[2]["secret"]
        assert secret.env_dict == {"REGISTRY_USERNAME": "robot", "REGISTRY_PASSWORD": "s3cret-pass"}
        assert creates[0]["image"].steps[1:] == ["run_commands", "env"]  # pip in a virtualenv
        rows = Sandbox.objects.all()
        assert "s3cret-pass" not in str(list(rows.values()))


def test_modal_backend_declares_one_chain_per_image_for_many_sandboxes(tmp_path):
    spec_value = {"base": "debian:bookworm", "apt": ["ripgrep"], "pip": ["libcst"]}
    key = engine_image_key(image_spec_parse(spec_value), backend="modal")
    spec = SandboxSpec(image_spec=spec_value, image_key=key, tools_home=True)
    with modal_fake_backend(tmp_path / "modal") as backend:
        handles = [backend.create(spec) for _ in range(5)]
        images = {id(c["image"]) for c in backend.fake.called("Sandbox.create")}
        assert len(images) == 1
        home = backend.fake.sandboxes[handles[0].external_id].extra / "convoy" / "home"
        assert home.is_dir()
        for handle in handles:
            backend.terminate(handle)


def test_daytona_campaign_runs_on_its_image_built_by_daytona(
    tmp_path, monkeypatch, manager, worker_in_process
):
    with cloud_fake_installed("daytona", tmp_path / "daytona", monkeypatch) as engine:
        campaign, runs = _run_campaign(manager, _spec_with_image("daytona"), repos=1)

        params = [c["params"] for c in engine.fake.called("Daytona.create")]
        [first] = [p for p in params if isinstance(p, daytona.CreateSandboxFromImageParams)]
        assert isinstance(first.image, daytona.Image)
        dockerfile = first.image.dockerfile()
        assert dockerfile.startswith("FROM debian:bookworm-slim")
        assert "ripgrep" in dockerfile
        assert "/opt/convoy-venv/bin/pip install libcst" in dockerfile
        assert "GREETING" in dockerfile
        key = engine_image_key(image_spec_parse(campaign.spec["image"]), backend="daytona")
        assert [run.image_key for run in runs] == [key]
        assert not fake_running(engine)


def test_daytona_refuses_registry_credentials_naming_the_field(tmp_path, settings):
    settings.LOCAL_REGISTRIES = ["127.0.0.1:5000"]
    value = {"oci": "127.0.0.1:5000/team/python:3.12", "credentials_secret": "REGISTRY_LOGIN"}
    spec = SandboxSpec(
        image_spec=value,
        image_key=engine_image_key(image_spec_parse(value), backend="daytona"),
        image_credentials="robot:s3cret-pass",
    )
    with daytona_fake_backend(tmp_path / "daytona") as backend:
        with pytest.raises(SandboxError) as info:
            backend.create(spec)
        assert str(info.value).startswith("image.credentials_secret: ")
        assert "s3cret-pass" not in str(info.value)
        assert not backend.fake.called("Daytona.create")


def test_e2b_campaign_with_an_image_fails_its_runs_naming_image(
    tmp_path, monkeypatch, manager, worker_in_process
):
    with cloud_fake_installed("e2b", tmp_path / "e2b", monkeypatch) as engine:
        repos_make(1, tag=DEMO_TAG)
        campaign = campaign_create(actor=manager, source=_spec_with_image("e2b"))
        campaign_launch(campaign=campaign, actor=manager)
        campaign_completed(campaign, timeout=240)

        [run] = RepoRun.objects.filter(campaign=campaign)
        assert run.state == RunState.FAILED
        assert "image: the e2b backend cannot run campaign images" in run.error
        assert "modal" in run.error and "daytona" in run.error
        assert not fake_running(engine)


def test_backends_page_says_who_builds_campaign_images(client, admin_user, settings):
    settings.SANDBOX_BACKENDS = ("bwrap", "modal", "e2b", "daytona")
    settings.SANDBOX_BACKEND = "bwrap"
    client.force_login(admin_user)
    page = client.get("/sandboxes/backends/").content.decode()

    def card(name: str) -> str:
        return page.split(f'id="backend-{name}"')[1].split("</section>")[0]

    assert "campaign images (built on this host)" in card("bwrap")
    for name in ("modal", "daytona"):
        assert "campaign images (built by the provider)" in card(name)
    assert "campaign images" not in card("e2b")
