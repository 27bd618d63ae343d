"""The run executor: one repository's clone, setup, snapshot, fork, transform, validate, diff."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets as pysecrets
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from agents.spec import model_for_variant
from campaigns import agents as agent_models
from campaigns.baseline import baseline_run, baseline_wanted
from campaigns.dispatch import (
    campaign_finish_if_done,
    run_sandbox_slots,
    run_succeed,
    runs_dispatch,
    runs_enqueue,
    worker_name,
)
from campaigns.environment import (
    diff_cap_bytes,
    diff_read,
    run_environment_prepare,
    run_excludes_text,
)
from campaigns.heartbeat import RunHeartbeat
from campaigns.models import (
    RepoRun,
    RunState,
    Validation,
    Variant,
    VariantState,
)
from campaigns.runs import run_claim, run_cleanup, run_fail, run_load, run_loaded
from campaigns.secret_grants import secret_values_for_run
from campaigns.services import sandboxes_terminate_live
from campaigns.signals import variant_diff_rows, variant_diff_stored
from campaigns.states import (
    RunFailed,
    RunStopped,
    run_transition,
    variant_start,
    variant_transition,
)
from campaigns.teardown import sandbox_terminate_logged as _terminate
from campaigns.teardown import sandbox_terminate_soon, teardowns_pending, teardowns_wait
from core.rows import row_insert
from core.secret_forms import SecretScanner
from core.text import nul_shown
from sandboxes.backends.base import Capability, SandboxError, SandboxSpec
from sandboxes.egress.sandbox import spec_network_fields
from sandboxes.models import SandboxSnapshot
from sandboxes.repos import RepoUrlError, checkout_ahead, checkout_discard, sandbox_repo_checkout
from sandboxes.services import (
    backend_get,
    sandbox_create,
    sandbox_exec,
    sandbox_fork,
    sandbox_snapshot,
    sandboxes_orphans_terminate,
)

logger = logging.getLogger(__name__)

REPO_DIR = "/workspace"
OUTPUT_TAIL_BYTES = 4000
CHECK_EVERY_S = 1.0  # how often a run's steps ask whether it was cancelled
MAX_TRANSIENT_RETRIES = 4


class _Context:
    """Everything one run's steps need, loaded once."""

    def __init__(self, run: RepoRun, heartbeat: RunHeartbeat, ahead=None) -> None:

        self.run = run
        self.ahead = ahead  # the first checkout, made while this loads (repos.checkout_ahead)
        self.campaign = run.campaign
        self.spec = self.campaign.spec
        self.heartbeat = heartbeat
        self.backend = backend_get(self.campaign.backend)
        limits = self.spec["limits"]
        self.sandbox_spec = SandboxSpec(
            cpu=limits["cpu"],
            memory_mb=limits["memory_mb"],
            gpu=limits.get("gpu"),
            timeout_s=limits["timeout_s"],
            **spec_network_fields(
                self.spec.get("network"), egress_mb=limits.get("egress_mb", 1024)
            ),
            # Read-only at /convoy/files/<name> ($CONVOY_FILES), outside the checkout and its diff.
            files={name: text.encode() for name, text in self.spec["files"].items()},
            labels={
                "convoy_campaign": str(self.campaign.pk),
                "convoy_run": str(run.pk),
            },
        )
        self.secrets = secret_values_for_run(
            campaign=self.campaign, names=self.spec["secrets"], run_id=run.pk
        )
        self.models = any(model_for_variant(self.spec, v) for v in self.spec["variants"])
        self.launcher = self.campaign.launched_by or self.campaign.owner
        # The claim (or the hand-off) that gave us the run read its state a moment ago: the
        # first check asks the database a CHECK_EVERY_S later, as every other one does.
        self._checked_at = time.monotonic()
        # PostgreSQL, no secrets: the lone variant's end, its diff's rows and the run's base
        # commit are written by the run's end (`run_succeed`), in one statement.
        self.one_statement = connection.vendor == "postgresql" and not self.spec["secrets"]
        self.variant_final: tuple | None = None  # (variant id, fields), with `diff_rows`
        self.diff_rows: list = []
        self.run_fields: dict = {}
        self.lone = False  # one variant, no snapshot and no baseline: one sandbox in all

    def prepare(self) -> None:
        """The model gateway and the environment (an image build may fail): after the secrets
        are known, so the run's error is masked with them."""
        self.sandbox_spec = agent_models.run_models_prepare(ctx=self)  # the model gateway
        self.sandbox_spec = run_environment_prepare(ctx=self)  # image, tools area, self.home
        self._checked_at = time.monotonic()

    def check(self) -> None:
        """Stop if the run was cancelled or taken away. The database is asked at most every
        CHECK_EVERY_S: a cancel also terminates the run's sandboxes at once, so a step that
        started just before it stops anyway."""
        if self.heartbeat.lost.is_set():
            raise RunStopped("lease lost")
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY_S:
            return
        state = RepoRun.objects.filter(pk=self.run.pk).values_list("state", flat=True).first()
        if state != RunState.RUNNING:
            raise RunStopped(f"run is {state}")
        self._checked_at = now

    def owner(self, kind: str, pk: int) -> dict:
        return {
            "owner_kind": kind,
            "owner_id": pk,
            "campaign_id": self.campaign.pk,
            "run_id": self.run.pk,
            "on_behalf_of": self.launcher,
        }

    def redact(self, text: str) -> str:
        return SecretScanner(self.secrets).mask(text) if self.secrets else text


def _redacted(ctx: _Context | None, text: str) -> str:
    """A run's error as stored: masked with its secrets once they were loaded (an error's text
    can quote what a sandbox printed or wrote, the checkout's or the image build's output)."""
    return ctx.redact(text) if ctx is not None else text


def _exec(
    ctx: _Context,
    sandbox,
    script: str,
    *,
    env=None,
    timeout_s=None,
    cap=None,
    argv=None,
    last=False,
    log_stop_at=None,
):
    """Run a shell script in the sandbox's repository (its log shows `script`, not a wrapper).

    Returns (command, output): the tail of both streams in order, or with `cap` every byte,
    as a (stdout, stderr) pair so that parsed stdout never mixes with stderr. `last`: the
    sandbox is terminated after this command (engines may run it as the sandbox itself).
    """

    keep_all = cap is not None
    chunks: deque[bytes] = deque()
    streams: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    size = [0]

    def on_output(event) -> None:
        if keep_all:
            streams.setdefault(event.stream, []).append(event.data)
            return
        chunks.append(event.data)
        size[0] += len(event.data)
        while size[0] - len(chunks[0]) > OUTPUT_TAIL_BYTES and len(chunks) > 1:
            size[0] -= len(chunks.popleft())

    command = sandbox_exec(
        sandbox=sandbox,
        argv=argv or ["bash", "-c", script],
        cwd=REPO_DIR,
        env={"HOME": ctx.home, **(env or {})},  # /tmp, or the tools area /convoy/home
        timeout_s=timeout_s or ctx.spec["limits"]["timeout_s"],
        output_cap=cap or 10 * 1024 * 1024,
        secrets=ctx.secrets or None,
        on_output=on_output,
        last=last,
        shown=script,
        log_stop_at=log_stop_at,
    )
    if keep_all:
        return command, (b"".join(streams["stdout"]), b"".join(streams["stderr"]))
    return command, b"".join(chunks)


def _tail(ctx: _Context, data: bytes) -> str:
    text = data[-OUTPUT_TAIL_BYTES:].decode("utf-8", errors="replace")
    return ctx.redact(nul_shown(text))


def _step_failure(label: str, step: dict, command, output: str) -> str:
    why = "timed out" if command.timed_out else f"exited with {command.exit_code}"
    why += f" ({command.limit_hit})" if command.limit_hit else ""
    return f"{label} `{step['run'][:200]}` {why}\n{output}".rstrip()


def _prepare(
    ctx: _Context,
    owner_kind: str,
    owner_id: int,
    *,
    variant_id: int | None = None,
    starts: Variant | None = None,
):
    """A fresh sandbox (with the spec's files) with the repository checked out and setup done.

    `starts`: the variant this sandbox serves, started (pending → running) as soon as its
    sandbox exists, while the checkout is still under way; None if it was already handled."""

    run = ctx.run
    sandbox = sandbox_create(
        spec=ctx.sandbox_spec,
        backend=ctx.backend.name,
        variant_id=variant_id,
        **ctx.owner(owner_kind, owner_id),
    )
    try:
        if starts is not None and not _variant_start(starts, sandbox):
            _terminate(sandbox, "variant already handled")
            return None
        ctx.check()
        try:
            # Fetches the host-side mirror (once per attempt: its variants share a fetch made
            # since the run started; a retry fetches again), then clones the commit in.
            started = run.started_at
            ahead, ctx.ahead = ctx.ahead, None
            commit = sandbox_repo_checkout(
                sandbox=sandbox,
                url=run.repository.url,
                ref=run.ref,
                fresh_after=started.timestamp() if started else None,
                ahead=ahead,
                exclude=run_excludes_text(ctx.spec),  # the tools area and diff.exclude
            )
        except RepoUrlError as exc:
            raise RunFailed(f"checkout of {run.ref} failed: {exc.message}") from None
        if run.base_commit and commit != run.base_commit:
            raise RunFailed(f"{run.ref} moved from {run.base_commit[:12]} to {commit[:12]}")
        if not run.base_commit:
            run.base_commit = commit
            step = "checked_out" if ctx.spec["setup"] else "prepared"
            if ctx.one_statement and ctx.lone and not ctx.spec["setup"]:
                # Kept by the run's end: a run that ends otherwise checks out afresh.
                ctx.run_fields = {"base_commit": commit}
            else:
                RepoRun.objects.filter(pk=run.pk).update(base_commit=commit, step=step)
        for i, step in enumerate(ctx.spec["setup"]):
            ctx.check()
            command, out = _exec(ctx, sandbox, step["run"], timeout_s=step.get("timeout_s"))
            if command.exit_code != 0 or command.timed_out:
                raise RunFailed(_step_failure(f"setup[{i}]", step, command, _tail(ctx, out)))
    except BaseException:
        _terminate(sandbox, "preparation stopped")
        raise
    return sandbox


# The patch's format, whatever the image's or the checkout's git settings say: prefixes
# (`diff.mnemonicPrefix`, `diff.noprefix`), submodules as commits (`diff.submodule=log` prints
# a summary git apply cannot read), full context (`diff.context=0` makes hunks git apply
# refuses), paths from the top, not relative to a directory (`diff.relative`).
DIFF_FORMAT = "--src-prefix=a/ --dst-prefix=b/ --submodule=short --unified=3 --no-relative"


class StepFailed(Exception):
    def __init__(self, command, output: bytes) -> None:
        super().__init__("step failed")
        self.command, self.output = command, output


def _transform_and_diff(
    ctx: _Context, sandbox, step: dict, env: dict, *, last: bool
) -> tuple[bytes, dict]:
    """Run the last transform step, then stage everything and read the binary-safe patch, in one
    sandbox command; the file list and line counts come from reading that patch on the host.
    The step's own script is the command's last argument, so the sandbox's command record
    shows it verbatim; it runs in a subshell of the wrapper (as
    `bash -c` would run it, without starting another bash), with no positional parameters.

    Returns (the step's output, diff fields); raises StepFailed if the step failed.
    """
    nonce = pysecrets.token_hex(8)
    done = f"--convoy-step-done-{nonce}--"
    base = ctx.run.base_commit
    # The step may have written the checkout's own git settings: none may hide a change from
    # the reviewers (`.git/info/attributes` or a tiny core.bigFileThreshold turned source files
    # into opaque binary hunks, which publishing applied all the same).
    git = (
        "git -c safe.directory='*' -c core.hooksPath=/dev/null "
        "-c core.attributesFile=/dev/null -c core.bigFileThreshold=1g"
    )
    # After the step, git's stderr goes to a file so warnings cannot mix into the patch bytes.
    # Everything after the marker is taken as the patch and read strictly on the host: the step
    # can print the marker itself, so no number or file list the sandbox prints is trusted.
    wrapper = (
        '( __convoy_step=$1; set --; eval "$__convoy_step" ); status=$?; '
        "if [ $status -ne 0 ]; then exit $status; fi; "
        # A test first: `rm` is a process a run, and the file is almost never there.
        "if [ -e .git/info/attributes ] || [ -L .git/info/attributes ]; then "
        "rm -f .git/info/attributes; fi; "
        f"printf '\\n%s\\n' '{done}'; exec 2>/tmp/.convoy-git-stderr; "
        f"{{ {git} add -A . >/dev/null && "
        f"{git} diff --cached --binary -p --no-color --no-ext-diff --no-textconv "
        f"{DIFF_FORMAT} {base}; }} || {{ status=$?; cat /tmp/.convoy-git-stderr; exit $status; }}"
    )
    command, out = _exec(
        ctx,
        sandbox,
        step["run"],
        env=env,
        timeout_s=step.get("timeout_s"),
        cap=diff_cap_bytes(ctx.spec),  # past it, the diff is over limits.max_diff_mb
        argv=["bash", "-c", wrapper, "convoy-step", step["run"]],
        last=last,
        log_stop_at=f"\n{done}\n".encode(),  # the log keeps the step's output, not the diff
    )
    stdout, stderr = out
    # The step can read the marker (it runs inside the wrapper's `bash -c`) and print it: the
    # wrapper's own marker is the last one, since nothing of the step runs after it but what
    # the step left in the background; whatever comes after is read strictly (`diff_read`).
    step_out, sep, rest = stdout.rpartition(f"\n{done}\n".encode())
    if not sep:
        step_out = stdout
    step_out += stderr
    if not sep:
        if command.truncated:
            raise RunFailed("the transform's output exceeded the cap before the diff was read")
        raise StepFailed(command, step_out)
    if command.exit_code != 0 and not command.truncated:
        raise RunFailed(f"could not read the diff: {_tail(ctx, rest)}")
    patch = rest
    files = diff_read(ctx.spec, patch, bool(command.truncated))
    diffstat = [
        {
            "path": f"{f.old_path} => {f.new_path}" if f.old_path != f.new_path else f.path,
            "added": f.added,
            "deleted": f.removed,
            "binary": f.binary,
        }
        for f in files
    ]
    plus, minus = sum(f.added for f in files), sum(f.removed for f in files)
    return step_out, {
        "patch": patch,
        "patch_truncated": bool(command.truncated),
        "diff_sha256": hashlib.sha256(patch).hexdigest() if patch else "",
        "diffstat": diffstat,
        "files_changed": len(diffstat),
        "insertions": plus,
        "deletions": minus,
    }


def _variant_start(variant: Variant, sandbox=None) -> bool:
    """Pending → running (with its sandbox, when it has one already); False if another claim
    handled it. Each variant runs at most once per claim."""
    variant.started_at = timezone.now()
    return variant_start(
        variant_id=variant.pk,
        started_at=variant.started_at,
        sandbox_id=sandbox.pk if sandbox is not None else None,
    )


def _variant_run(ctx: _Context, variant: Variant, snapshot, sandbox=None) -> None:
    """Fork (or prepare), transform, capture the diff, validate. A given `sandbox` was
    prepared for this variant, which `_prepare` started. The run's lone variant (`ctx.lone`)
    leaves its end to the run's end where it can (`_Context.one_statement`)."""

    if sandbox is None and not _variant_start(variant):
        return
    started = variant.started_at
    spec_variant = next(v for v in ctx.spec["variants"] if v["name"] == variant.name)
    given = sandbox
    result: dict = {}
    try:
        try:
            if sandbox is None and snapshot is not None:
                sandbox = sandbox_fork(
                    snapshot=snapshot,
                    count=1,
                    spec=ctx.sandbox_spec,
                    variant_id=variant.pk,
                    **ctx.owner("variant", variant.pk),
                )[0]
            elif sandbox is None:
                sandbox = _prepare(ctx, "variant", variant.pk, variant_id=variant.pk)
            if given is None:
                Variant.objects.filter(pk=variant.pk).update(sandbox_id=sandbox.pk)
            env = {**spec_variant["env"], "CONVOY_VARIANT": variant.name}
            env |= agent_models.variant_model_env(ctx=ctx, spec_variant=spec_variant, pk=variant.pk)
            steps = spec_variant.get("transform") or ctx.spec["transform"]
            for i, step in enumerate(steps):
                ctx.check()
                try:
                    if i < len(steps) - 1:
                        command, out = _exec(
                            ctx, sandbox, step["run"], env=env, timeout_s=step.get("timeout_s")
                        )
                        if command.exit_code != 0 or command.timed_out:
                            raise StepFailed(command, out)
                    else:
                        last = not ctx.spec["validate"]  # else validation follows
                        out, diff = _transform_and_diff(ctx, sandbox, step, env, last=last)
                        result.update(diff)
                        result["output_tail"] = _tail(ctx, out)
                except StepFailed as failed:
                    result = {
                        "state": VariantState.FAILED,
                        "error": _step_failure(f"transform[{i}]", step, failed.command, ""),
                        "output_tail": _tail(ctx, failed.output),
                    }
                    break  # (not return: the variant's final transition below must run)
            else:  # every transform step succeeded: validate
                result["validation"] = Validation.SKIPPED
                validate = ctx.spec["validate"]
                for i, step in enumerate(validate):
                    ctx.check()
                    command, out = _exec(
                        ctx,
                        sandbox,
                        step["run"],
                        env=env,
                        timeout_s=step.get("timeout_s"),
                        last=i == len(validate) - 1,
                    )
                    result["output_tail"] = _tail(ctx, out)
                    if command.exit_code != 0 or command.timed_out:
                        result["validation"] = Validation.FAILED
                        result["error"] = _step_failure(f"validate[{i}]", step, command, "")
                        break
                    result["validation"] = Validation.PASSED
                result["state"] = VariantState.COMPLETED
        except RunFailed as exc:
            result = {"state": VariantState.FAILED, "error": str(exc)}
        except SandboxError as exc:
            if exc.transient:
                raise
            result = {"state": VariantState.FAILED, "error": f"sandbox error: {exc}"}
    finally:
        if sandbox is not None:  # in the background: the variant's result need not wait
            sandbox_terminate_soon(sandbox, "variant finished")
    if ctx.models:  # without a model variant there is no grant to revoke or explain
        result = agent_models.variant_model_finish(variant_id=variant.pk, result=result)
    if not result:
        return
    finished = timezone.now()
    state = result.pop("state")
    result |= {
        "finished_at": finished,
        "duration_ms": int((finished - started).total_seconds() * 1000),
    }
    for key in ("error", "output_tail"):  # PostgreSQL text cannot hold NUL
        if isinstance(result.get(key), str):
            # Masked here, once for every way a variant fails: errors quote exceptions' text.
            result[key] = ctx.redact(nul_shown(result[key]))
    diff = {}
    if "patch" in result:
        diff = {
            "variant_id": variant.pk,
            "campaign_id": ctx.run.campaign_id,
            "patch": bytes(result["patch"]),
            "diff_sha256": result["diff_sha256"],
            "secret_names": ctx.spec["secrets"],  # a launched spec never changes
        }
    if ctx.lone and ctx.one_statement:
        ctx.variant_final = (variant.pk, {"state": state, **result})
        if diff:
            answers = variant_diff_rows.send(sender=Variant, **diff)
            ctx.diff_rows = [row for _, rows in answers for row in rows or ()]
        return
    with transaction.atomic():
        moved = variant_transition(
            variant_id=variant.pk, from_state=VariantState.RUNNING, to_state=state, **result
        )
        if moved and diff:
            variant_diff_stored.send(sender=Variant, **diff)


def _variants_ensure(run: RepoRun) -> list[Variant]:
    """The run's variant rows, made on its first attempt's first claim (by the hand-off that
    gave it its slot, if that made them: `dispatch.run_succeed`)."""
    made = getattr(run, "variants_new", None)
    if made is not None and not run.resumed:
        return made
    wanted = [
        Variant(run=run, name=v["name"], position=i)
        for i, v in enumerate(run.campaign.spec["variants"])
    ]
    if run.attempt == 1 and not run.resumed:  # none can exist yet: the insert returns them
        if len(wanted) == 1:  # one INSERT; bulk_create would add BEGIN and COMMIT around it
            with contextlib.suppress(IntegrityError):
                return [row_insert(wanted[0])]
        else:
            with contextlib.suppress(IntegrityError), transaction.atomic():
                made = Variant.objects.bulk_create(wanted)
                if all(v.pk for v in made):
                    return made
    Variant.objects.bulk_create(wanted, ignore_conflicts=True)
    return list(run.variants.order_by("position"))


def _run_pipeline(ctx: _Context) -> bool:
    """The run's steps; True when every sandbox they made is known to be ended or handed to
    the teardown thread (the run's cleanup then need not look for live ones)."""

    run = ctx.run
    if run.resumed:
        # Anything a dead worker left running for this run is ours to clean up now: recorded
        # sandboxes, and engine sandboxes it made but never recorded as running.

        sandboxes_terminate_live(reason="worker lost; run resumed", run_id=run.pk)
        sandboxes_orphans_terminate(
            backend=ctx.backend.name,
            labels={"convoy_run": str(run.pk)},
            reason="worker lost; run resumed",
        )
        Variant.objects.filter(run=run, state=VariantState.RUNNING).update(
            state=VariantState.PENDING
        )
    pending = [v for v in _variants_ensure(run) if v.state == VariantState.PENDING]
    if not pending:
        return False
    can_snapshot = Capability.SNAPSHOT in ctx.backend.capabilities
    snapshot = None
    if run.snapshot_id and can_snapshot:
        snapshot = SandboxSnapshot.objects.filter(pk=run.snapshot_id, deleted_at=None).first()
    base = None
    if snapshot is None:
        ctx.check()
        snapshotting = can_snapshot and len(pending) + baseline_wanted(ctx) > 1
        ctx.lone = len(pending) == 1 and not baseline_wanted(ctx)
        if snapshotting:
            base = _prepare(ctx, "run", run.pk)
        else:  # no fork: this sandbox serves the first variant, started with it
            base = _prepare(
                ctx, "variant", pending[0].pk, variant_id=pending[0].pk, starts=pending[0]
            )
            if base is None:  # another claim handled it
                pending = pending[1:]
        if ctx.spec["setup"] and not snapshotting:  # else "snapshotted" follows at once
            RepoRun.objects.filter(pk=run.pk).update(step="prepared")
        if snapshotting:
            run.snapshotting = True  # from here a snapshot may exist before snapshot_id says so
            try:
                snapshot = sandbox_snapshot(sandbox=base, owner_kind="run", owner_id=run.pk)
            finally:
                _terminate(base, "snapshot taken")
            base = None
            run.snapshot_id = snapshot.pk
            RepoRun.objects.filter(pk=run.pk).update(snapshot_id=snapshot.pk, step="snapshotted")
    ctx.check()
    # Without a snapshot the prepared sandbox serves the first variant; the others get fresh
    # sandboxes with setup rerun.
    baseline_run(ctx, snapshot, prepare=_prepare, run_step=_exec)  # once, on the untouched repo
    jobs = [(v, base if i == 0 else None) for i, v in enumerate(pending)]
    if not jobs:
        return False

    def one(job):
        try:
            _variant_run(ctx, job[0], snapshot, job[1])
        finally:
            connection.close()

    if len(jobs) == 1:
        _variant_run(ctx, jobs[0][0], snapshot, jobs[0][1])
        # Its one sandbox (this claim's only one) was terminated or handed to the teardown
        # thread before `_variant_run` returned, whatever its outcome.
        return snapshot is None and not baseline_wanted(ctx) and not run.resumed
    at_once = run_sandbox_slots(
        variants=len(jobs), max_parallel=ctx.campaign.max_parallel, backend=ctx.backend.name
    )
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        futures = [pool.submit(one, job) for job in jobs]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return False


def run_execute(*, run_id: int) -> str:
    """Carry one queued run through its remaining steps; return how it ended. Safe to call
    twice: the second call finds the run claimed (or final) and returns.

    A run that ends with its campaign's next run pending hands its slot on (`slot_handoff`),
    and this call carries that run too, and so on, as long as its campaign has pending runs.
    While it carries one, the repository of the run it earmarked to take after it is checked
    out ahead (`dispatch.Earmark`).
    """
    worker = worker_name()
    run = run_claim(run_id, worker)
    if run is None:
        return "not queued"
    staged: dict[int, Future] = {}  # checkouts made ahead, by earmarked run
    outcome, next_id, handed = _run_carry(run, worker, staged)
    while next_id is not None:
        run = run_loaded(handed) if handed is not None else run_load(next_id, resumed=False)
        _, next_id, handed = _run_carry(run, worker, staged)
    for checkout in staged.values():
        checkout_discard(checkout)
    return outcome


def _run_carry(
    run: RepoRun, worker: str, staged: dict[int, Future]
) -> tuple[str, int | None, RepoRun | None]:
    """One claimed run, start to end: (how it ended, the run it handed its slot to, that run
    loaded if the hand-off loaded it).

    `staged`: the checkouts under way for runs this worker earmarked (`dispatch.Earmark`), by
    run id, kept up to date here: this run's is used; the run's end hands the slot to the
    earmarked run if it is still pending, and earmarks the next one, whose checkout starts
    then and is made while the handed run is carried."""

    heartbeat = RunHeartbeat(run.pk, worker)
    heartbeat.start()
    launcher = run.campaign.launched_by or run.campaign.owner
    outcome = "succeeded"
    accounted = False  # every sandbox the run made is ended or queued for teardown
    next_id = None  # the campaign's next run, which the freed slot went to
    handed = None  # that run, loaded by the statement that handed it the slot
    final = False  # this call moved the run to a final state
    started = run.started_at
    ahead = staged.pop(run.pk, None)  # checked out while the run before was carried
    if ahead is None:
        ahead = checkout_ahead(
            backend=run.campaign.backend,
            url=run.repository.url,
            ref=run.ref,
            fresh_after=started.timestamp() if started else None,
            exclude=run_excludes_text(run.campaign.spec),
        )
    mine = min(staged, default=None)  # the run this worker earmarked, if any
    ctx = None  # its secrets mask the run's error
    try:
        ctx = _Context(run, heartbeat, ahead)
        ctx.prepare()
        accounted = _run_pipeline(ctx)
        end = run_succeed(
            run_id=run.pk,
            campaign_id=run.campaign_id,
            worker=worker,
            variant=ctx.variant_final,
            rows=ctx.diff_rows,
            run_fields=ctx.run_fields,
            mine=mine,
            earmark=ahead is not None,  # a local engine: its checkouts can be made ahead
            variants=[v["name"] for v in run.campaign.spec["variants"]],
            launched_at=run.campaign.launched_at,
        )
        final, next_id, handed = end.moved, end.next_id, end.handed
        if end.earmarked is not None:
            staged[end.earmarked.run_id] = _ahead_for(run, end.earmarked)
    except RunStopped as exc:
        outcome = f"stopped: {exc}"
    except RunFailed as exc:
        outcome = "failed"
        next_id = run_fail(run, _redacted(ctx, str(exc)), launcher, worker, mine=mine)
    except SandboxError as exc:
        if exc.transient and run.transient_retries < MAX_TRANSIENT_RETRIES:
            outcome = "requeued"
            delay = min(60, 2 ** (run.transient_retries + 1))
            if run_transition(
                run_id=run.pk,
                from_state=RunState.RUNNING,
                to_state=RunState.QUEUED,
                transient_retries=F("transient_retries") + 1,
                queued_at=timezone.now() + timedelta(seconds=delay),
                worker="",
            ):
                logger.warning(
                    "run %s: transient sandbox error, retry in %ss: %s", run.pk, delay, exc
                )
                runs_enqueue([run.pk], countdown=delay)
        else:
            outcome = "failed"
            message = _redacted(ctx, f"sandbox error: {exc}")
            next_id = run_fail(run, message, launcher, worker, mine=mine)
    except Exception as exc:
        logger.exception("run %s failed unexpectedly", run.pk)
        outcome = "failed"
        message = _redacted(ctx, f"internal error: {type(exc).__name__}: {exc}")
        next_id = run_fail(run, message, launcher, worker, mine=mine)
    finally:
        checkout_discard(ahead)  # unused when the run stopped before its first checkout
        heartbeat.stop()
        # Known final: its state need not be read back. Sandboxes queued for the teardown
        # thread are left to it (terminating them here would put teardown back on the path).
        if not (final and accounted):  # else no sandbox of this run can be live but queued
            run_cleanup(run, final=final, handed_off=teardowns_pending())
        if any(model_for_variant(run.campaign.spec, v) for v in run.campaign.spec["variants"]):
            agent_models.run_models_close(run_id=run.pk)  # no model variant: no grant
    if next_id is None:  # this worker's last run for now: its sandboxes go before the campaign
        teardowns_wait()
    if outcome != "requeued" and next_id is None:
        campaign_finish_if_done(campaign_id=run.campaign_id)
        runs_dispatch()
    if mine is not None and next_id != mine:
        # The earmarked run was no longer pending (cancelled, or another worker took it,
        # as an earmark allows): its checkout will not be used.
        checkout_discard(staged.pop(mine))
    return outcome, next_id, handed


def _ahead_for(run: RepoRun, earmarked) -> Future | None:
    """The checkout of the earmarked run (same campaign as `run`), started now; its mirror
    counts as fresh from now, as it would from that run's start."""
    return checkout_ahead(
        backend=run.campaign.backend,
        url=earmarked.url,
        ref=earmarked.ref,
        fresh_after=time.time(),
        exclude=run_excludes_text(run.campaign.spec),
    )
