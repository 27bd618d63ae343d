"""Campaign test helpers: generated repositories registered under this run's repo root."""

import uuid
from pathlib import Path

from django.conf import settings

from campaigns.demo import demo_repos_create
from campaigns.models import Campaign, CampaignState, RepoRun, RunState
from campaigns.services import repositories_register
from tests.support import wait_for


def repos_make(count: int, *, tag: str | None = None) -> tuple[str, list[Path]]:
    """`count` demo repositories in a fresh directory, registered with a fresh tag."""
    tag = tag or f"t{uuid.uuid4().hex[:8]}"
    root = Path(settings.REPO_ROOTS[0]) / tag
    paths = demo_repos_create(root, count)
    repositories_register(
        entries=[{"url": f"file://{p}", "ref": "main"} for p in paths], tags=[tag]
    )
    return tag, paths


def spec_for(tag: str, *, name: str, backend: str = "bwrap", extra: str = "", **fields) -> str:
    """The demo spec aimed at `tag`, with a name, backend and optional overrides."""
    from campaigns.demo import DEMO_SPEC

    spec = DEMO_SPEC.replace("name: assert-equal-cleanup", f"name: {name}\nbackend: {backend}")
    spec = spec.replace("repos: {tag: demo}", f"repos: {{tag: {tag}}}")
    for key, value in fields.items():
        spec = "\n".join(
            f"{key}: {value}" if line.startswith(f"{key}:") else line for line in spec.splitlines()
        )
    return spec + extra


def runs_final(campaign, *, timeout: float = 180) -> None:
    def done():
        return not RepoRun.objects.filter(
            campaign=campaign, state__in=[RunState.PENDING, RunState.QUEUED, RunState.RUNNING]
        ).exists()

    wait_for(done, timeout=timeout, interval=0.2, what=f"every run of {campaign.name} to finish")


def campaign_completed(campaign, *, timeout: float = 180) -> None:
    """Every run final, then the campaign marked completed."""
    runs_final(campaign, timeout=timeout)
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED,
        timeout=30,
        what="campaign completed",
    )
