"""What happened in a campaign, per repository and variant: outcome, failing step, exit code,
duration, diffstat and the last lines of the failing output.

One read model for the command line (`manage.py campaign status|apply --wait|preview`), the
preview page and the summary by outcome, so they never disagree about what "failed" means.
"""

from __future__ import annotations

import re
from collections import Counter

from django.db.models import Count, Q

from campaigns.models import (
    Campaign,
    Outcome,
    RepoRun,
    RunState,
    Validation,
    Variant,
    VariantState,
)
from campaigns.secret_grants import variant_diffs_for_display
from sandboxes.models import Sandbox

TAIL_LINES = 10

# How a run or variant ended, in the order summaries list them.
OUTCOMES = (
    "passed",
    "no validation",
    "validation failed",
    "transform failed",
    "setup failed",
    "run failed",
    "cancelled",
    "running",
    "pending",
)
OK_OUTCOMES = ("passed", "no validation")
ACTIVE_OUTCOMES = ("running", "pending")

# The first line of a step failure, as the pipeline writes it (campaigns.pipeline._step_failure).
_STEP_RE = re.compile(
    r"^(?P<step>(?:setup|transform|validate)\[\d+\]) `(?P<command>.*?)` "
    r"(?:exited with (?P<code>-?\d+)|(?P<timed_out>timed out))",
)


def step_failure_parse(text: str) -> dict | None:
    """{step, command, exit_code, timed_out} from an error's first line; None when the error
    is not a step's (a checkout or a sandbox failure)."""
    match = _STEP_RE.match(text or "")
    if match is None:
        return None
    return {
        "step": match["step"],
        "command": match["command"],
        "exit_code": int(match["code"]) if match["code"] is not None else None,
        "timed_out": bool(match["timed_out"]),
    }


def _tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    return [line for line in (text or "").rstrip().splitlines() if line.strip()][-lines:]


def _run_outcome(run: RepoRun) -> str:
    if run.state == RunState.FAILED:
        failed = step_failure_parse(run.error)
        return "setup failed" if failed and failed["step"].startswith("setup") else "run failed"
    if run.state == RunState.CANCELLED:
        return "cancelled"
    return {RunState.PENDING: "pending", RunState.QUEUED: "pending"}.get(run.state, "running")


def variant_outcome(run: RepoRun, variant) -> str:
    if run.state in (RunState.FAILED, RunState.CANCELLED) and variant.state in (
        VariantState.PENDING,
        VariantState.RUNNING,
        VariantState.CANCELLED,
    ):
        return _run_outcome(run)
    if variant.state == VariantState.COMPLETED:
        return {
            Validation.PASSED: "passed",
            Validation.FAILED: "validation failed",
        }.get(variant.validation, "no validation")
    if variant.state == VariantState.FAILED:
        return "transform failed"
    if variant.state == VariantState.CANCELLED:
        return "cancelled"
    return "running" if variant.state == VariantState.RUNNING else "pending"


def _duration_s(start, end) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _variant_row(run: RepoRun, variant) -> dict:
    outcome = variant_outcome(run, variant)
    row = {
        "name": variant.name,
        "state": variant.state,
        "outcome": outcome,
        "validation": variant.validation,
        # Against the run's baseline: passes, fixes, still_failing, regresses, fails or "".
        "against_baseline": Outcome.of(baseline=run.baseline, validation=variant.validation),
        "duration_s": (variant.duration_ms / 1000 if variant.duration_ms is not None else None),
        "files_changed": variant.files_changed,
        "insertions": variant.insertions,
        "deletions": variant.deletions,
        "diff_sha256": variant.diff_sha256,
        "sandbox_id": variant.sandbox_id,
        "failing_step": None,
        "exit_code": None,
        "output_tail": [],
    }
    if outcome in ("validation failed", "transform failed"):
        failed = step_failure_parse(variant.error)
        row["failing_step"] = failed["step"] if failed else "sandbox"
        row["failing_command"] = failed["command"] if failed else ""
        row["exit_code"] = failed["exit_code"] if failed else None
        row["output_tail"] = _tail(variant.output_tail) or _tail(variant.error)
    return row


def run_report(run: RepoRun) -> dict:
    """One repository: its run and each of its variants."""
    failed = step_failure_parse(run.error) if run.state == RunState.FAILED else None
    row = {
        "run_id": run.pk,
        "repository": run.repository.name,
        "url": run.repository.url,
        "state": run.state,
        "outcome": _run_outcome(run) if run.state != RunState.SUCCEEDED else "succeeded",
        "attempt": run.attempt,
        "baseline": run.baseline,
        "duration_s": _duration_s(run.started_at, run.finished_at),
        "error": run.error_summary,
        "failing_step": (failed["step"] if failed else "run") if run.error else None,
        "exit_code": failed["exit_code"] if failed else None,
        "output_tail": _tail("\n".join(run.error.splitlines()[1:])) if run.error else [],
        "variants": [_variant_row(run, v) for v in run.variants.all()],
    }
    if run.error:  # a step's command, or what went wrong outside the steps (checkout, sandbox)
        row["failing_command"] = failed["command"] if failed else run.error.splitlines()[0][:200]
    return row


def campaign_runs_report(*, campaign: Campaign, repository: str | None = None) -> list[dict]:
    runs = (
        RepoRun.objects.filter(campaign=campaign)
        .select_related("repository")
        .prefetch_related("variants")
        .order_by("id")
    )
    if repository:
        runs = runs.filter(Q(repository__name=repository) | Q(repository__url=repository))
    return [run_report(run) for run in runs.iterator(chunk_size=500)]


def report_summary(runs: list[dict]) -> dict:
    """Counts by outcome (each variant once; a failed run's variants count as its outcome) and
    the failing steps, each with the repositories/variants where it failed."""
    outcomes: Counter = Counter()
    failing: dict[tuple, list[str]] = {}
    for run in runs:
        for v in run["variants"] or [{"name": "", "outcome": run["outcome"]}]:
            outcomes[v["outcome"]] += 1
        if run["failing_step"]:
            key = (run["failing_step"], run.get("failing_command", ""), run["exit_code"])
            failing.setdefault(key, []).append(run["repository"])
            continue
        for v in run["variants"]:
            if v["failing_step"]:
                key = (v["failing_step"], v.get("failing_command", ""), v["exit_code"])
                failing.setdefault(key, []).append(f"{run['repository']}/{v['name']}")
    return {
        "outcomes": {name: outcomes[name] for name in OUTCOMES if outcomes[name]},
        "failing_steps": [
            {"step": step, "command": command, "exit_code": code, "where": where}
            for (step, command, code), where in sorted(failing.items(), key=lambda kv: kv[0][0])
        ],
        "ok": all(name in OK_OUTCOMES for name in outcomes),
        "final": not any(name in ACTIVE_OUTCOMES for name in outcomes),
    }


# Against the baseline, in the order the dashboard and `campaign status` list them; "fails"
# (validation failed, no baseline result to read it against) only when there are some.
BASELINE_OUTCOMES = (Outcome.PASSES, Outcome.FIXES, Outcome.STILL_FAILING, Outcome.REGRESSES)


def baseline_compared(spec: dict) -> bool:
    """Whether a campaign's variants read against a baseline: validate steps, baseline on."""
    return bool(spec.get("validate")) and spec.get("baseline", True) is not False


def _baseline_rows(counts: Counter) -> list[dict]:
    rows = [
        {"outcome": o.value, "label": o.value.replace("_", " "), "count": counts[o]}
        for o in BASELINE_OUTCOMES
    ]
    if counts[Outcome.FAILS]:
        rows.append({"outcome": "fails", "label": "fails (no baseline)", "count": counts["fails"]})
    return rows


def baseline_outcomes(*, campaign: Campaign) -> list[dict] | None:
    """Variants by outcome against their run's baseline ({outcome, label, count}, zeros
    included), in one GROUP BY; None when the campaign has no baseline to read against."""
    if not baseline_compared(campaign.spec):
        return None
    counts: Counter = Counter()
    for baseline, validation, n in (
        Variant.objects.filter(
            run__campaign=campaign, validation__in=(Validation.PASSED, Validation.FAILED)
        )
        .order_by()
        .values_list("run__baseline", "validation")
        .annotate(n=Count("id"))
    ):
        counts[Outcome.of(baseline=baseline, validation=validation)] += n
    return _baseline_rows(counts)


def baseline_outcomes_of(runs: list[dict]) -> list[dict]:
    """The same counts from run reports (`campaign_runs_report`): no further query."""
    counts = Counter(v["against_baseline"] for run in runs for v in run["variants"])
    return _baseline_rows(counts)


def baseline_line(rows: list[dict]) -> str:
    """One line of text: "against the baseline: passes 3, fixes 1, still failing 0, …"."""
    return "against the baseline: " + ", ".join(f"{r['label']} {r['count']}" for r in rows)


def variant_patches(*, run_ids: list[int]) -> dict[tuple[int, str], str]:
    """{(run id, variant name): the diff as text} for these runs' variants that have one."""
    rows = list(
        Variant.objects.filter(run_id__in=run_ids)
        .exclude(diff_sha256="")
        .only("run_id", "name", "patch")
    )
    shown = variant_diffs_for_display(variants=rows)  # masked where flagged
    return {(v.run_id, v.name): shown[v.pk] for v in rows}


def run_sandboxes(*, run_ids: list[int], variant: str | None = None) -> list[dict]:
    """The sandboxes these runs used, oldest first, each labelled by what it ran for (a
    variant's name, or "setup" for the sandbox a run prepared and snapshotted)."""
    runs = dict(RepoRun.objects.filter(pk__in=run_ids).values_list("pk", "repository__name"))
    names = dict(Variant.objects.filter(run_id__in=run_ids).values_list("pk", "name"))
    out = []
    for box in Sandbox.objects.filter(run_id__in=run_ids).order_by("id"):
        label = names.get(box.variant_id, "setup") if box.variant_id else "setup"
        if variant and label not in (variant, "setup"):
            continue
        out.append(
            {
                "sandbox_id": box.pk,
                "run_id": box.run_id,
                "repository": runs.get(box.run_id, ""),
                "label": label,
            }
        )
    return out


def run_rows(runs) -> list[tuple[RepoRun, dict | None, int | None]]:
    """(run, its failing step or None, its duration in ms or None) for a page of runs."""
    return [
        (
            run,
            step_failure_parse(run.error) if run.error else None,
            int((run.finished_at - run.started_at).total_seconds() * 1000)
            if run.started_at and run.finished_at
            else None,
        )
        for run in runs
    ]
