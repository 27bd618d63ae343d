"""A run's steps as its page lists them (setup, then each variant's transform and validate),
with the step that failed marked, and the sandboxes whose logs the page links to.

The pipeline names a failed step at the start of the error it stores ("setup[0] `make` exited
with 2"); this module reads that label back rather than keeping a second record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db.models import Q

from campaigns.models import RepoRun, Variant
from sandboxes.models import Sandbox

FAILED_STEP_RE = re.compile(r"^(setup|transform|validate)\[(\d+)\]")


@dataclass(frozen=True)
class Step:
    phase: str  # setup, transform, validate
    index: int
    command: str
    failed: bool


def failed_step(error: str) -> tuple[str, int] | None:
    """(phase, index) of the step an error names, or None."""
    match = FAILED_STEP_RE.match(error or "")
    return (match.group(1), int(match.group(2))) if match else None


def _steps(phase: str, steps: list, failed: tuple[str, int] | None) -> list[Step]:
    return [
        Step(
            phase, i, str(s.get("run", "")) if isinstance(s, dict) else str(s), failed == (phase, i)
        )
        for i, s in enumerate(steps or [])
    ]


def run_setup_steps(*, run: RepoRun) -> list[Step]:
    return _steps("setup", run.campaign.spec.get("setup"), failed_step(run.error))


def variant_steps(*, run: RepoRun, variant: Variant) -> list[Step]:
    """The transform and validate steps this variant runs, the failed one marked."""
    spec = run.campaign.spec
    declared = next((v for v in spec.get("variants", []) if v.get("name") == variant.name), {})
    failed = failed_step(variant.error)
    return _steps("transform", declared.get("transform") or spec.get("transform"), failed) + _steps(
        "validate", spec.get("validate"), failed
    )


def run_sandboxes(*, run: RepoRun, variants: list[Variant]) -> list[Sandbox]:
    """Every sandbox of this run, the setup ones too (a setup failure leaves no variant link)."""
    owned = Q(owner_kind="run", owner_id=run.pk) | Q(
        owner_kind="variant", owner_id__in=[v.pk for v in variants]
    )
    return list(Sandbox.objects.filter(owned).order_by("id"))


def run_page_context(*, run: RepoRun, variants: list[Variant]) -> dict:
    """What the run page adds to its variants: steps, and the sandboxes to link logs of.

    Each variant gets `steps` and `sandboxes` (its own, also when setup failed in it before it
    recorded `sandbox_id`); the run's shared setup sandboxes come as `setup_sandboxes`.
    """
    sandboxes = run_sandboxes(run=run, variants=variants)
    for v in variants:
        v.steps = variant_steps(run=run, variant=v)
        v.sandboxes = [
            s
            for s in sandboxes
            if (s.owner_kind == "variant" and s.owner_id == v.pk) or s.variant_id == v.pk
        ]
    return {
        "setup_steps": run_setup_steps(run=run),
        "setup_sandboxes": [s for s in sandboxes if s.owner_kind == "run"],
        "failed_step": failed_step(run.error),
    }
