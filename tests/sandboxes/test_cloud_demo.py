"""The demo campaign, unchanged but for `backend:`, runs end to end on each cloud backend with
the provider's SDK replaced by its fake (FakeModal, FakeE2B, FakeDaytona: the clouds cannot be
reached from here), and the fake records the whole story: create, snapshot, fork, exec and
teardown, with nothing left running.

Everything else is real: the database and broker of the shape under test, the campaign
services and dispatcher, a Celery worker consuming the queue, the run pipeline. The worker runs
inside the test process (threads pool, as the embedded server runs it) because the fake SDK
lives in this process's memory; the SDK boundary is the only seam.
"""

import daytona
import pytest

from campaigns.demo import DEMO_TAG
from campaigns.models import Campaign, CampaignState, RepoRun, RunState
from campaigns.services import campaign_create, campaign_launch
from sandboxes.models import Sandbox
from tests.campaigns.test_backend_choice import demo_spec_on
from tests.factories import campaign_completed, repos_make
from tests.sandboxes.fake_cloud import CLOUD_FAKES, cloud_fake_installed, fake_running, sdk_story

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.slow]

REPOS = 2
VARIANTS = 3


@pytest.fixture
def worker_in_process(transactional_db):
    """A real Celery worker (threads pool) on this shape's broker, inside the test process."""
    from config.embedded import embedded_worker_start

    worker = embedded_worker_start(beat=False, concurrency=2)
    yield worker
    worker.stop()


@pytest.mark.parametrize("backend", list(CLOUD_FAKES))
def test_cloud_fake_demo_campaign_end_to_end(
    backend, tmp_path, monkeypatch, manager, worker_in_process
):
    with cloud_fake_installed(backend, tmp_path / backend, monkeypatch) as engine:
        repos_make(REPOS, tag=DEMO_TAG)
        campaign = campaign_create(actor=manager, source=demo_spec_on(backend))
        campaign_launch(campaign=campaign, actor=manager)

        campaign_completed(campaign, timeout=240)

        runs = list(RepoRun.objects.filter(campaign=campaign))
        assert len(runs) == REPOS
        assert {run.state for run in runs} == {RunState.SUCCEEDED}, [r.error for r in runs]
        assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED
        story = sdk_story(engine)
        # Each run: one sandbox from the image, set up, snapshotted, forked per variant (and
        # once more for the baseline on the untouched checkout, where the spec wants one).
        assert len(story["create"]) == REPOS
        assert len(story["snapshot"]) == REPOS
        assert REPOS * VARIANTS <= len(story["fork"]) <= REPOS * (VARIANTS + 1)
        assert story["exec"], "no command reached the provider"
        made = {*story["create"], *story["fork"]}
        assert made <= set(story["teardown"]), "a sandbox was never torn down"
        assert not fake_running(engine)


@pytest.mark.parametrize(("backend", "gpu"), [("modal", "A10G:2"), ("daytona", "H100:2")])
def test_cloud_fake_limits_gpu_reaches_the_provider(
    backend, gpu, tmp_path, monkeypatch, manager, worker_in_process, client, admin_user
):
    limits = f"{{timeout_s: 600, cpu: 1, memory_mb: 512, gpu: '{gpu}'}}"
    with cloud_fake_installed(backend, tmp_path / backend, monkeypatch) as engine:
        repos_make(1, tag=DEMO_TAG)
        campaign = campaign_create(actor=manager, source=demo_spec_on(backend, limits=limits))
        campaign_launch(campaign=campaign, actor=manager)
        campaign_completed(campaign, timeout=240)

        sandboxes = Sandbox.objects.filter(campaign_id=campaign.pk)
        assert {s.limits["gpu"] for s in sandboxes} == {gpu}
        client.force_login(admin_user)
        assert f"GPU {gpu}" in client.get(f"/sandboxes/{sandboxes[0].pk}/").content.decode()
        if backend == "modal":
            assert {c["gpu"] for c in engine.fake.called("Sandbox.create")} == {gpu}
        else:  # creates from the image carry the resources; forks inherit the snapshot's
            params = [c["params"] for c in engine.fake.called("Daytona.create")]
            [first] = [p for p in params if isinstance(p, daytona.CreateSandboxFromImageParams)]
            assert (first.resources.gpu, first.resources.gpu_type) == (2, daytona.GpuType.H100)
