"""Baseline validation: the spec's `validate` steps run once on the untouched repository (after
setup, before any transform), so each variant's result reads against it: passes, fixes,
still failing or regresses (a repository whose tests already failed is not a regression).

The pipeline calls `baseline_run` once per run; it runs in a fork of the run's snapshot (so
what validation writes, caches and bytecode, never reaches a variant), or, on a backend
without snapshots, in a sandbox of its own prepared like the variants' ones.
"""

from __future__ import annotations

from collections.abc import Callable

from campaigns.models import RepoRun, Validation
from core.text import nul_shown
from sandboxes.services import sandbox_fork, sandbox_terminate

ERROR_CHARS = 4000


def baseline_wanted(ctx) -> bool:
    """Whether this run still needs its baseline (`baseline: false` in the spec skips it)."""
    spec = ctx.spec
    return bool(spec.get("baseline", True) and spec["validate"] and not ctx.run.baseline)


def baseline_run(ctx, snapshot, *, prepare: Callable, run_step: Callable) -> str:
    """Validate the untouched repository once; store and return the result (a Validation).

    `prepare(ctx, owner_kind, owner_id)` makes a prepared sandbox (used without a snapshot);
    `run_step(ctx, sandbox, script, timeout_s=, last=)` runs one step -> (command, output)."""
    if not baseline_wanted(ctx):
        return ctx.run.baseline
    run = ctx.run
    if snapshot is not None:
        owner = ctx.owner("run", run.pk)
        sandbox = sandbox_fork(snapshot=snapshot, count=1, spec=ctx.sandbox_spec, **owner)[0]
    else:
        sandbox = prepare(ctx, "run", run.pk)
    result, error = Validation.PASSED, ""
    try:
        steps = ctx.spec["validate"]
        for i, step in enumerate(steps):
            ctx.check()
            command, out = run_step(
                ctx, sandbox, step["run"], timeout_s=step.get("timeout_s"), last=i == len(steps) - 1
            )
            if command.exit_code != 0 or command.timed_out:
                why = "timed out" if command.timed_out else f"exited with {command.exit_code}"
                tail = ctx.redact(nul_shown(out[-ERROR_CHARS:].decode("utf-8", errors="replace")))
                result, error = Validation.FAILED, f"validate[{i}] {why}\n{tail}"
                break
    finally:
        sandbox_terminate(sandbox=sandbox, reason="baseline validated")
    RepoRun.objects.filter(pk=run.pk).update(baseline=result, baseline_error=error[-ERROR_CHARS:])
    run.baseline = result
    return result
