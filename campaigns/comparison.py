"""The provider comparison on a campaign's page: when the same spec (everything but its name,
description and `backend:`) has run on more than one backend, per backend the finished runs'
p50/p95 start time (run start to its first command: sandbox creation and checkout) and total
time, their failures, and the sandboxes' CPU-hours, the basis of a provider's bill.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass

from django.db.models import Min

from campaigns.models import Campaign, RepoRun, RunState
from sandboxes.models import Sandbox, SandboxCommand

IGNORED_KEYS = ("name", "description", "backend")  # what may differ between compared campaigns
RECENT_CAMPAIGNS = 100  # how far back to look for the same spec (specs are read whole)
FINAL = (RunState.SUCCEEDED, RunState.FAILED)


@dataclass(frozen=True)
class BackendFigures:
    backend: str
    campaigns: int
    runs: int
    failed: int
    start_p50: float | None  # seconds
    start_p95: float | None
    total_p50: float | None
    total_p95: float | None
    cpu_hours: float

    @property
    def failed_percent(self) -> int:
        return round(100 * self.failed / self.runs) if self.runs else 0


def spec_fingerprint(spec: dict) -> str:
    """The same for two specs that differ only in name, description and backend."""
    kept = {k: v for k, v in spec.items() if k not in IGNORED_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def backend_comparison(*, campaign: Campaign) -> list[BackendFigures]:
    """Per backend, the figures of the campaigns that ran this campaign's spec; empty unless
    at least two backends ran it."""
    fingerprint = spec_fingerprint(campaign.spec)
    recent = Campaign.objects.order_by("-id").values("id", "spec", "backend")[:RECENT_CAMPAIGNS]
    same = {c["id"]: c["backend"] for c in recent if spec_fingerprint(c["spec"]) == fingerprint}
    same[campaign.pk] = campaign.backend
    if len(set(same.values())) < 2:
        return []
    runs = list(
        RepoRun.objects.filter(campaign_id__in=same, state__in=FINAL).values(
            "id", "campaign_id", "state", "started_at", "finished_at"
        )
    )
    first_command = dict(
        SandboxCommand.objects.filter(sandbox__run_id__in=[r["id"] for r in runs])
        .values("sandbox__run_id")
        .annotate(first=Min("started_at"))
        .values_list("sandbox__run_id", "first")
    )
    starts, totals, failed = defaultdict(list), defaultdict(list), defaultdict(int)
    counted = defaultdict(int)
    for run in runs:
        backend = same[run["campaign_id"]]
        counted[backend] += 1
        failed[backend] += run["state"] == RunState.FAILED
        began, first = run["started_at"], first_command.get(run["id"])
        if began and first:
            starts[backend].append((first - began).total_seconds())
        if began and run["finished_at"]:
            totals[backend].append((run["finished_at"] - began).total_seconds())
    cpu_hours = defaultdict(float)
    sandboxes = Sandbox.objects.filter(campaign_id__in=same, terminated_at__isnull=False)
    for row in sandboxes.values("backend", "limits", "created_at", "terminated_at"):
        seconds = (row["terminated_at"] - row["created_at"]).total_seconds()
        cpu_hours[row["backend"]] += float((row["limits"] or {}).get("cpu") or 1) * seconds / 3600
    backends = sorted(set(same.values()), key=lambda b: (b != campaign.backend, b))
    return [
        BackendFigures(
            backend=b,
            campaigns=sum(1 for v in same.values() if v == b),
            runs=counted[b],
            failed=failed[b],
            start_p50=percentile(starts[b], 0.5),
            start_p95=percentile(starts[b], 0.95),
            total_p50=percentile(totals[b], 0.5),
            total_p95=percentile(totals[b], 0.95),
            cpu_hours=round(cpu_hours[b], 3),
        )
        for b in backends
    ]
