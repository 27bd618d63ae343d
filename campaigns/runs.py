"""A run's life around the pipeline: claiming it, loading it, failing it, cleaning up after it."""

from __future__ import annotations

import functools
import logging
import time

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.record import audit_record
from campaigns.dispatch import (
    slot_handoff,
)
from campaigns.models import (
    RUN_FINAL_STATES,
    Campaign,
    RepoRun,
    RunState,
    Variant,
    VariantState,
)
from campaigns.services import sandboxes_terminate_live
from campaigns.states import (
    error_signature,
    run_transition,
    runs_transition,
)
from campaigns.teardown import after_teardowns
from core.text import nul_shown
from sandboxes.models import SandboxSnapshot
from sandboxes.services import snapshot_delete

logger = logging.getLogger(__name__)


def run_claim(run_id: int, worker: str) -> RepoRun | None:
    """Move the run from queued to running for this worker; None if another got it first.

    The run comes back with `resumed` set when an earlier claim of this attempt may have left
    work behind (a worker died, or a transient error requeued it): only then does the pipeline
    look for leftover sandboxes and variants. A run never claimed has no heartbeat yet.
    """
    now = timezone.now()
    fields = {"worker": worker, "heartbeat_at": now, "started_at": now}
    claim = {"from_states": [RunState.QUEUED], "to_state": RunState.RUNNING, **fields}
    resumed = False
    if not runs_transition(
        runs=RepoRun.objects.filter(pk=run_id, heartbeat_at__isnull=True), **claim
    ):
        resumed = True
        if not runs_transition(runs=RepoRun.objects.filter(pk=run_id), **claim):
            return None
    return run_load(run_id, resumed=resumed)


def run_load(run_id: int, *, resumed: bool) -> RepoRun:
    run = (
        RepoRun.objects.select_related("repository")
        .annotate(campaign_launched_at=F("campaign__launched_at"))
        .get(pk=run_id)
    )
    return run_loaded(run, resumed=resumed)


def run_loaded(run: RepoRun, *, resumed: bool = False) -> RepoRun:
    """A run read with its repository and `campaign_launched_at` (here, or by the statement
    that handed it a slot: `dispatch.run_succeed`), made ready for the pipeline."""
    run.campaign = _campaign_launched(run.campaign_id, run.campaign_launched_at)
    run.resumed = resumed  # an earlier claim of this attempt may have left work behind
    run.snapshotting = False  # set once this claim starts a snapshot
    return run


LAUNCHED_CACHE_S = 300.0
_launched: dict[tuple, tuple[float, Campaign]] = {}


def _campaign_launched(campaign_id: int, launched_at) -> Campaign:
    """The campaign as its runs need it (spec, backend, owner and launcher), cached for a few
    minutes per worker process under its id and launch time: a launched campaign's spec never
    changes (only drafts can be edited), and a large spec (its `files:`) would otherwise be read
    and decoded per run. Its state is not to be read from here: runs check their own."""
    now = time.monotonic()
    key = (campaign_id, launched_at)
    hit = _launched.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    campaign = Campaign.objects.select_related("launched_by", "owner").get(pk=campaign_id)
    for old in [k for k, (until, _) in _launched.items() if until <= now]:
        _launched.pop(old, None)
    if campaign.launched_at is not None and campaign.launched_at == launched_at:
        _launched[key] = (now + LAUNCHED_CACHE_S, campaign)
    return campaign


def run_fail(
    run: RepoRun, message: str, launcher, worker: str, *, mine: int | None = None
) -> int | None:
    """Fail the run; the id of the campaign's next run if its slot went to it (see
    slot_handoff: `mine`, the run this worker earmarked, first)."""
    message = nul_shown(message)
    signature, summary = error_signature(message)
    with transaction.atomic():
        if run_transition(
            run_id=run.pk,
            from_state=RunState.RUNNING,
            to_state=RunState.FAILED,
            error=message[-20_000:],
            error_signature=signature,
            error_summary=summary,
            finished_at=timezone.now(),
        ):
            Variant.objects.filter(
                run=run, state__in=[VariantState.PENDING, VariantState.RUNNING]
            ).update(state=VariantState.CANCELLED, finished_at=timezone.now())
            audit_record(
                action="campaign.run.failed",
                actor_type="agent",
                on_behalf_of=launcher,
                target=run,
                outcome="failure",
                context={"campaign_id": run.campaign_id, "run_id": run.pk},
                payload={"signature": signature, "summary": summary},
            )
            return slot_handoff(campaign_id=run.campaign_id, worker=worker, mine=mine)
    return None


def run_cleanup(run: RepoRun, *, final: bool = False, handed_off: set[int] = frozenset()) -> None:
    """End the run's sandboxes, but for those `handed_off` to the teardown thread (it ends
    them); delete its snapshot once the run is final (`final`: the caller knows it is, else
    the state is read), after those teardowns when there are any (a snapshot with live forks
    cannot be deleted)."""
    sandboxes_terminate_live(reason="run finished", run_id=run.pk, skip=handed_off)
    if not (run.snapshot_id or run.resumed or run.snapshotting):
        return  # this claim made no snapshot, and no earlier one of this attempt ran
    if final or RepoRun.objects.filter(pk=run.pk, state__in=RUN_FINAL_STATES).exists():
        if handed_off:
            after_teardowns(functools.partial(_snapshots_delete, run.pk))
        else:
            _snapshots_delete(run.pk)


def _snapshots_delete(run_id: int) -> None:
    for snapshot in SandboxSnapshot.objects.filter(
        owner_kind="run", owner_id=run_id, deleted_at=None
    ):
        try:
            snapshot_delete(snapshot=snapshot)
        except Exception:
            logger.exception("could not delete snapshot %s", snapshot.pk)
