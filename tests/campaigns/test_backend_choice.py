"""The demo campaign runs unchanged on every cloud backend: only `backend:` differs;
`limits.gpu` is accepted only where the backend's capability flags offer GPUs; and the campaign
page compares the backends the same spec ran on."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.comparison import backend_comparison
from campaigns.demo import DEMO_CAMPAIGN, DEMO_SPEC, DEMO_TAG
from campaigns.models import Campaign, RepoRun, RunState
from campaigns.services import campaign_create
from campaigns.spec import CampaignSpecError, spec_parse
from sandboxes.models import Sandbox, SandboxCommand, SandboxState
from tests.factories import repos_make, run_make

pytestmark = pytest.mark.shapes("embedded", "production")

CLOUD_BACKENDS = ("modal", "e2b", "daytona")


def demo_spec_on(backend: str, *, limits: str | None = None) -> str:
    """DEMO_SPEC with a `backend:` line added (and, when given, its limits line replaced)."""
    spec = DEMO_SPEC.replace("\nrepos:", f"\nbackend: {backend}\nrepos:", 1)
    if limits is not None:
        old = next(line for line in spec.splitlines() if line.startswith("limits:"))
        spec = spec.replace(old, f"limits: {limits}", 1)
    return spec


def _error(text: str, path: str) -> str:
    with pytest.raises(CampaignSpecError) as info:
        spec_parse(text)
    messages = {e.path: e.message for e in info.value.errors}
    assert path in messages, str(info.value)
    return messages[path]


@pytest.mark.parametrize("backend", CLOUD_BACKENDS)
def test_demo_spec_with_only_the_backend_changed_is_accepted(db, manager, backend):
    repos_make(2, tag=DEMO_TAG)
    base = spec_parse(DEMO_SPEC).data
    text = demo_spec_on(backend)
    assert [line for line in text.splitlines() if line not in DEMO_SPEC.splitlines()] == [
        f"backend: {backend}"
    ]

    parsed = spec_parse(text).data

    assert parsed["backend"] == backend
    assert {k: v for k, v in parsed.items() if k != "backend"} == {
        k: v for k, v in base.items() if k != "backend"
    }
    campaign = campaign_create(actor=manager, source=text)
    assert (campaign.backend, campaign.spec["backend"]) == (backend, backend)


def test_an_unknown_backend_names_the_ones_there_are(db):
    message = _error(demo_spec_on("lambda"), "backend")
    for name in ("gvisor", "bwrap", "modal", "e2b", "daytona"):
        assert name in message


@pytest.mark.parametrize("backend", ["modal", "daytona"])
@pytest.mark.parametrize("gpu", ["T4", "A10G:2", "H100:8"])
def test_limits_gpu_is_accepted_where_the_backend_offers_gpus(backend, gpu):
    limits = f"{{timeout_s: 600, cpu: 1, memory_mb: 512, gpu: '{gpu}'}}"
    parsed = spec_parse(demo_spec_on(backend, limits=limits)).data
    assert parsed["limits"]["gpu"] == gpu


def test_limits_without_gpu_stay_as_they_were():
    assert "gpu" not in spec_parse(DEMO_SPEC).data["limits"]


@pytest.mark.parametrize("backend", ["bwrap", "gvisor", "e2b"])
def test_limits_gpu_is_refused_where_the_backend_offers_none_naming_those_that_do(backend):
    limits = "{timeout_s: 600, gpu: T4}"
    message = _error(demo_spec_on(backend, limits=limits), "limits.gpu")
    assert f"the {backend} backend offers no GPUs" in message
    assert "modal" in message and "daytona" in message
    assert "e2b" not in message.split(";", 1)[1]  # E2B's SDK offers no GPUs: not suggested


@pytest.mark.parametrize("gpu", ["", "T4:0", "A10G:x", "two gpus", "T4:100", "a/b", 4, True])
def test_limits_gpu_must_be_a_type_with_an_optional_count(gpu):
    value = repr(gpu) if isinstance(gpu, str) else str(gpu).lower()
    limits = f"{{timeout_s: 600, gpu: {value}}}"
    message = _error(demo_spec_on("modal", limits=limits), "limits.gpu")
    assert "GPU type with an optional count" in message


def test_a_refused_gpu_spec_stores_nothing(db, manager):
    repos_make(1, tag=DEMO_TAG)
    with pytest.raises(CampaignSpecError):
        campaign_create(actor=manager, source=demo_spec_on("bwrap", limits="{gpu: T4}"))
    assert not Campaign.objects.exists()


def _ran(campaign, *, seconds: list[tuple[int, int]], failed: int = 0) -> None:
    """Finished runs of `campaign`: (start, total) seconds each, the last `failed` of them failed,
    each with one 1-CPU sandbox alive for its total time and a first command after `start`."""
    t0 = timezone.now() - timedelta(hours=1)
    for i, (start, total) in enumerate(seconds):
        state = RunState.FAILED if i >= len(seconds) - failed else RunState.SUCCEEDED
        run = run_make(campaign=campaign, state=state)
        RepoRun.objects.filter(pk=run.pk).update(
            started_at=t0, finished_at=t0 + timedelta(seconds=total)
        )
        sandbox = Sandbox.objects.create(
            backend=campaign.backend,
            campaign_id=campaign.pk,
            run_id=run.pk,
            limits={"cpu": 1.0},
            state=SandboxState.TERMINATED,
        )
        Sandbox.objects.filter(pk=sandbox.pk).update(
            created_at=t0, terminated_at=t0 + timedelta(seconds=total)
        )
        command = SandboxCommand.objects.create(sandbox=sandbox, argv=["true"])
        SandboxCommand.objects.filter(pk=command.pk).update(
            started_at=t0 + timedelta(seconds=start)
        )


def test_provider_comparison_on_the_campaign_page(db, client, manager):
    repos_make(1, tag=DEMO_TAG)
    on_bwrap = campaign_create(actor=manager, source=demo_spec_on("bwrap"))
    renamed = demo_spec_on("modal").replace(f"name: {DEMO_CAMPAIGN}", "name: on-modal", 1)
    on_modal = campaign_create(actor=manager, source=renamed)
    other = demo_spec_on("e2b").replace(f"name: {DEMO_CAMPAIGN}", "name: other", 1)
    other = campaign_create(actor=manager, source=other.replace("--style", "--style=x"))
    _ran(on_bwrap, seconds=[(1, 10), (2, 20), (3, 30), (4, 40)], failed=1)
    _ran(on_modal, seconds=[(5, 50), (7, 70)])
    _ran(other, seconds=[(9, 90)])  # another spec: not compared

    bwrap, modal = backend_comparison(campaign=on_bwrap)

    assert (bwrap.backend, bwrap.campaigns, bwrap.runs, bwrap.failed) == ("bwrap", 1, 4, 1)
    assert (bwrap.start_p50, bwrap.start_p95, bwrap.total_p50, bwrap.total_p95) == (2, 4, 20, 40)
    assert bwrap.cpu_hours == round(100 / 3600, 3) and bwrap.failed_percent == 25
    assert (modal.backend, modal.runs, modal.failed, modal.start_p50, modal.total_p95) == (
        "modal", 2, 0, 5, 70
    )  # fmt: skip
    client.force_login(manager)
    page = client.get(f"/campaigns/{on_modal.pk}/").content.decode()
    section = page.split('data-testid="backend-comparison"')[1].split("</section>")[0]
    assert section.count('data-testid="comparison-row"') == 2
    assert 'modal <span class="muted">(this campaign)</span>' in section
    assert "5.0 s / 7.0 s" in section and "1 (25%)" in section
    assert (
        'data-testid="backend-comparison"'
        not in client.get(f"/campaigns/{other.pk}/").content.decode()
    )
