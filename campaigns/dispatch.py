"""Dispatch and concurrency: which runs start where, slot hand-off, the periodic tick.

Slots are counted in sandboxes: a run holds as many as it runs variants at once
(`run_sandbox_slots`), a campaign's `max_parallel` caps its sandboxes, and campaigns on local
backends share a host-wide cap derived from the machine's cores and memory (`host_sandbox_cap`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from datetime import timedelta
from functools import lru_cache
from typing import NamedTuple

from celery import current_app
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import Count, Q
from django.utils import timezone

from audit.record import audit_record
from campaigns.models import (
    RUN_ACTIVE_STATES,
    RUN_FINAL_STATES,
    Campaign,
    CampaignState,
    RepoRun,
    Repository,
    RunState,
    RunTransition,
    Variant,
    VariantState,
)
from campaigns.signals import DiffRow
from campaigns.states import run_transition, runs_transition
from core.rows import assignments_prepared, row_from_db, row_stored
from sandboxes.backends import LOCAL_BACKENDS

logger = logging.getLogger(__name__)


def _dispatch_lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x636F6E766F79])  # "convoy"


# The task that carries a run (campaigns.tasks, a web edge above this module) is sent by name:
# the domain never imports its own task wrappers.
RUN_EXECUTE_TASK = "campaigns.run_execute"


def runs_enqueue(run_ids: list[int], *, countdown: float | None = None) -> None:
    """Send one run_execute task per run (after `countdown` seconds)."""
    for run_id in run_ids:
        current_app.signature(RUN_EXECUTE_TASK, args=(run_id,)).apply_async(countdown=countdown)


# Campaigns whose pending runs are dispatched: launched ones and those running a preview.
DISPATCH_STATES = (CampaignState.RUNNING, CampaignState.PREVIEWING)
# Variants of one run that run at once (campaigns.pipeline starts no more than this).
VARIANTS_AT_ONCE = 3
SANDBOX_MEMORY_MB = 512  # what the host cap assumes one sandbox needs


def host_sandbox_cap() -> int:
    """Sandboxes this host runs at once for local backends: two per core, and no more than
    its memory holds at SANDBOX_MEMORY_MB each (at least one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (ValueError, OSError):
        memory_mb = SANDBOX_MEMORY_MB * 2 * cores
    return max(1, min(2 * cores, memory_mb // SANDBOX_MEMORY_MB))


def run_sandbox_slots(*, variants: int, max_parallel: int, backend: str) -> int:
    """Sandboxes one run of a campaign holds at once: its variants, as many as run together,
    never more than the campaign's max_parallel or (local backends) the host cap."""
    slots = min(max(1, variants), VARIANTS_AT_ONCE, max(1, max_parallel))
    if backend in LOCAL_BACKENDS:
        slots = min(slots, host_sandbox_cap())
    return slots


def runs_dispatch() -> int:
    """Fill free sandbox slots with pending runs: each campaign's max_parallel counts the
    sandboxes its active runs hold, MAX_PARALLEL_REPOS caps active runs, and local backends
    share the host cap.

    Called at launch, whenever a run finishes, and by the periodic tick. Only as many tasks
    as there are free slots go to the broker, however many repositories a campaign has.
    """
    queued_total = 0
    with transaction.atomic():
        _dispatch_lock()
        active = dict(
            RepoRun.objects.filter(state__in=RUN_ACTIVE_STATES)
            .values_list("campaign_id")
            .annotate(n=Count("id"))
        )
        free_global = settings.MAX_PARALLEL_REPOS - sum(active.values())
        if free_global <= 0:
            return 0
        campaigns = list(
            Campaign.objects.filter(state__in=DISPATCH_STATES)
            .order_by("launched_at", "id")
            .values_list("pk", "max_parallel", "backend", "spec__variants")
        )
        slots = {
            cid: run_sandbox_slots(
                variants=len(variants or []), max_parallel=max_parallel, backend=backend
            )
            for cid, max_parallel, backend, variants in campaigns
        }
        local = {cid for cid, _, backend, _ in campaigns if backend in LOCAL_BACKENDS}
        host_free = host_sandbox_cap() - sum(
            n * slots.get(cid, 1) for cid, n in active.items() if cid in local
        )
        now = timezone.now()
        for cid, max_parallel, _, _ in campaigns:
            used = active.get(cid, 0) * slots[cid]
            sandboxes_free = max_parallel - used
            if cid in local:
                sandboxes_free = min(sandboxes_free, host_free)
            free = min(free_global, sandboxes_free // slots[cid])
            if free <= 0:
                continue
            pending = _pending_first(cid, free)
            if not pending:  # its tail: slots free, nothing left to start
                continue
            ids = runs_transition(
                runs=RepoRun.objects.filter(pk__in=pending),
                from_states=[RunState.PENDING],
                to_state=RunState.QUEUED,
                queued_at=now,
            )
            if ids:
                transaction.on_commit(lambda ids=ids: runs_enqueue(ids))
                queued_total += len(ids)
                free_global -= len(ids)
                if cid in local:
                    host_free -= len(ids) * slots[cid]
            if free_global <= 0:
                break
    return queued_total


def _pending_sql(also: str = "", *, limit: str = "1", lock: bool = True) -> str:
    """PostgreSQL: the campaign's first pending runs meeting `also` (at most `limit`), locked
    unless another hand-off holds them (`lock`). It probes the partial index
    `run_pending_handoff` (models.RepoRun): ordered by `id + 0`, which only that index provides,
    and with `pending` written into the statement, not bound, so that a prepared statement's
    generic plan can use the partial index too. By id with the state bound, both the
    planner's custom and generic plans walked the primary key past every finished run (3,400
    rows filtered out 3,000 runs into a campaign, and growing). Parameter: the campaign id."""
    pending = RunState.PENDING.value  # a literal of our own: safe in the statement's text
    return (
        f"SELECT r.id FROM {RepoRun._meta.db_table} r "  # noqa: S608 (our names only)
        f"WHERE r.campaign_id = %s AND r.state = '{pending}' {also} "
        f"ORDER BY r.id + 0 LIMIT {limit}" + (" FOR UPDATE OF r SKIP LOCKED" if lock else "")
    )


def _pending_pick_sql() -> str:
    """The dispatcher's pick: `_pending_sql` without a lock. Parameters: campaign id, how
    many."""
    return _pending_sql(limit="%s", lock=False)


def _pending_first(campaign_id: int, n: int) -> list[int]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_pending_pick_sql(), [campaign_id, n])
            return [row[0] for row in cursor.fetchall()]
    return list(
        RepoRun.objects.filter(campaign_id=campaign_id, state=RunState.PENDING)
        .order_by("id")
        .values_list("pk", flat=True)[:n]
    )


def slot_handoff(*, campaign_id: int, worker: str, mine: int | None = None) -> int | None:
    """Give the slot a finishing run frees to its campaign's next pending run, claimed for this
    worker (pending → queued → running); None if the campaign has none pending.

    Called in the transaction that moves the finishing run out of running, so the number of
    active runs never drops and rises again: no dispatcher can count the slot free in between.
    It is the run the dispatcher would pick (a campaign under its max_parallel keeps its slots,
    in id order, but for earmarks: see `mine`), without a dispatch's lock and counts, and
    without a broker round trip: the same task carries it on. Should the worker die first, the
    run is running with a fresh heartbeat, and the tick requeues it once that lease runs out,
    as for any run.

    `mine`: the pending run this worker earmarked (`run_succeed`), taken first if it is still
    pending; on PostgreSQL, runs other workers earmarked come after unmarked ones.
    """
    if connection.vendor == "postgresql":
        return _handoff_one_statement(campaign_id=campaign_id, worker=worker, mine=mine)
    next_ids = list(
        RepoRun.objects.filter(
            campaign_id=campaign_id,
            state=RunState.PENDING,
            campaign__state__in=DISPATCH_STATES,
        )
        .order_by("id")
        # Runs finishing together would all pick the same lowest id and wait on each other's
        # lock; each takes the first one no other hand-off holds (PostgreSQL; no-op on SQLite).
        .select_for_update(skip_locked=True, of=("self",))
        .values_list("pk", flat=True)[:1]
    )
    if not next_ids:
        return None
    now = timezone.now()
    runs = RepoRun.objects.filter(pk__in=next_ids)
    if not runs_transition(
        runs=runs, from_states=[RunState.PENDING], to_state=RunState.QUEUED, queued_at=now
    ):
        return None
    runs_transition(
        runs=runs,
        from_states=[RunState.QUEUED],
        to_state=RunState.RUNNING,
        worker=worker,
        heartbeat_at=now,
        started_at=now,
    )
    return next_ids[0]


def _handoff_ctes(also: str = "") -> str:
    """The CTEs of a hand-off on PostgreSQL: `next`, the locking pick of the campaign's next
    pending run (skipping runs other hand-offs hold; `also`: one more condition), `moved`, its
    move to running, and `noted`, both transition rows (pending → queued, queued → running).
    Parameters: `_handoff_params`.

    The pick, in order: the run this worker earmarked (`mine`, see `run_succeed`) if it is
    still pending; else the first pending run no worker earmarked; else the first pending run
    (another worker's earmark is a hint, never a hold: a worker that died leaves its mark)."""
    runs, campaigns = RepoRun._meta.db_table, Campaign._meta.db_table
    transitions = RunTransition._meta.db_table
    pending = RunState.PENDING.value  # a literal of our own: safe in the statement's text
    is_open = "AND EXISTS (SELECT 1 FROM open)"
    unmarked = _pending_sql("AND r.worker = '' AND NOT EXISTS (SELECT 1 FROM mine) " + is_open)  # noqa: S608
    taken = "SELECT 1 FROM mine UNION ALL SELECT 1 FROM unmarked"
    marked = _pending_sql(is_open + " AND NOT EXISTS (" + taken + ")")
    return f"""
        open AS (
            SELECT 1 FROM {campaigns} c WHERE c.id = %s AND c.state = ANY(%s) {also}
        ), mine AS (
            SELECT r.id FROM {runs} r WHERE r.id = %s AND r.campaign_id = %s
                AND r.state = '{pending}' {is_open}
            FOR UPDATE OF r SKIP LOCKED
        ), unmarked AS (
            {unmarked}
        ), marked AS (
            {marked}
        ), next AS (
            SELECT id FROM mine UNION ALL SELECT id FROM unmarked UNION ALL SELECT id FROM marked
        ), moved AS (
            UPDATE {runs} SET state = %s, queued_at = %s, worker = %s, heartbeat_at = %s,
                started_at = %s
            FROM next WHERE {runs}.id = next.id AND {runs}.state = %s
            RETURNING {runs}.*
        ), noted AS (
            INSERT INTO {transitions} (run_id, campaign_id, from_state, to_state, at)
            SELECT id, campaign_id, %s, %s, %s FROM moved
            UNION ALL SELECT id, campaign_id, %s, %s, %s FROM moved
        )"""  # noqa: S608 (our table names only; values are parameters)


def _handoff_params(campaign_id: int, worker: str, now, mine: int | None = None) -> list:
    pending, queued, running = RunState.PENDING, RunState.QUEUED, RunState.RUNNING
    dispatching = [str(state) for state in DISPATCH_STATES]
    picks = [campaign_id, dispatching, mine, campaign_id, campaign_id, campaign_id]
    params = [*picks, running, now, worker, now, now, pending]
    return [*params, pending, queued, now, queued, running, now]


def _handoff_one_statement(*, campaign_id: int, worker: str, mine: int | None) -> int | None:
    """`slot_handoff` on PostgreSQL in one statement instead of seven."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH {_handoff_ctes()} SELECT id FROM moved",  # noqa: S608 (see _handoff_ctes)
            _handoff_params(campaign_id, worker, timezone.now(), mine),
        )
        row = cursor.fetchone()
    return row[0] if row else None


class RunEnd(NamedTuple):
    """What `run_succeed` did: whether it moved the run, the run its slot went to (its id, and
    on PostgreSQL that run loaded), and the pending run it earmarked for this worker next."""

    moved: bool
    next_id: int | None = None
    handed: RepoRun | None = None
    earmarked: Earmark | None = None


class Earmark(NamedTuple):
    """A pending run a worker marked as the one it takes after the run it was handed
    (`RepoRun.worker` names that worker while the run is pending), so that it can check the
    repository out ahead, while it carries the run before."""

    run_id: int
    url: str
    ref: str


def run_succeed(
    *,
    run_id: int,
    campaign_id: int,
    worker: str,
    variant: tuple[int, dict] | None = None,
    rows: Sequence[DiffRow] = (),
    run_fields: dict | None = None,
    mine: int | None = None,
    earmark: bool = False,
    variants: Sequence[str] = (),
    launched_at=None,
) -> RunEnd:
    """Move the run from running to succeeded and hand the slot it frees on (`slot_handoff`,
    `mine` first), together.

    On PostgreSQL one statement does both moves and their transition rows (the hand-off only
    if the run moved: the row lock its UPDATE takes and its re-check of the state let one
    caller through); elsewhere one transaction does (`run_transition`, then `slot_handoff`).
    PostgreSQL only: `variant` (id, final fields), its lone variant's end from running, with
    `rows` (`campaigns.signals.variant_diff_rows`), written only if the variant moved;
    `run_fields`, more of the run's own fields (its base commit); and with `earmark`, when the
    slot went on, the campaign's first pending run no worker earmarked is marked for this
    worker (`Earmark`). The handed run comes back loaded, with its repository and
    `campaign_launched_at`, as `runs.run_load` needs it; with `variants` (the spec's variant
    names, of the campaign as launched at `launched_at`), its variant rows are made too, pending,
    if it is on its first attempt and the campaign was not revised since (`variants_new`, None
    if they were not made here: the pipeline then makes or reads them).
    """
    now = timezone.now()
    done = {"finished_at": now, "step": "done"}
    db = connections[DEFAULT_DB_ALIAS]  # looked up once (see core.rows)
    if db.vendor != "postgresql":
        assert variant is None and not run_fields, "one statement: PostgreSQL only"
        with transaction.atomic():
            if not run_transition(
                run_id=run_id, from_state=RunState.RUNNING, to_state=RunState.SUCCEEDED, **done
            ):
                return RunEnd(False)
            return RunEnd(True, slot_handoff(campaign_id=campaign_id, worker=worker, mine=mine))
    runs, transitions = RepoRun._meta.db_table, RunTransition._meta.db_table
    running, succeeded = RunState.RUNNING, RunState.SUCCEEDED
    # Our table and column names only (S608); every value is a parameter.
    ctes, params = [], []
    if variant is not None:
        variant_id, fields = variant
        sets, values = assignments_prepared(Variant, fields)
        table = Variant._meta.db_table
        update = f"UPDATE {table} SET {sets} WHERE id = %s AND state = %s RETURNING id"  # noqa: S608
        ctes.append(f"vmoved AS ({update})")
        params += [*values, variant_id, VariantState.RUNNING]
        for i, row in enumerate(rows):
            sql, values = _diff_row_sql(row, when="EXISTS (SELECT 1 FROM vmoved)")
            ctes.append(f"row{i} AS ({sql})")
            params += values
    more, more_values = assignments_prepared(RepoRun, {**(run_fields or {}), **done})
    update = f"UPDATE {runs} SET state = %s, {more} WHERE id = %s AND state = %s"  # noqa: S608
    ctes.append(f"done AS ({update} RETURNING id, campaign_id)")
    params += [succeeded, *more_values, run_id, running]
    noted = f"INSERT INTO {transitions} (run_id, campaign_id, from_state, to_state, at)"
    ctes.append(f"done_noted AS ({noted} SELECT id, campaign_id, %s, %s, %s FROM done)")  # noqa: S608
    params += [running, succeeded, now]
    handoff = _handoff_ctes(also="AND EXISTS (SELECT 1 FROM done)")
    params += _handoff_params(campaign_id, worker, now, mine)
    repos, campaigns = Repository._meta.db_table, Campaign._meta.db_table
    mark = "SELECT NULL::bigint AS id, NULL::bigint AS repository_id, NULL AS ref WHERE false"
    if earmark:
        # The campaign's first pending run no worker earmarked, other than the one handed:
        # marked for this worker, which starts its checkout now (`pipeline._run_carry`).
        first = _pending_sql(
            "AND r.worker = '' AND EXISTS (SELECT 1 FROM moved) "
            "AND r.id NOT IN (SELECT id FROM next)"
        )
        mark = (
            f"UPDATE {runs} SET worker = %s FROM ({first}) AS k "  # noqa: S608
            f"WHERE {runs}.id = k.id RETURNING {runs}.id, {runs}.repository_id, {runs}.ref"
        )
        params += [worker, campaign_id]
    made, made_values = _variants_new_sql(variants, launched_at)
    params += made_values
    # The run the slot went to, as `runs.run_load` loads it: its row as the hand-off left it,
    # its repository, its campaign's launch time; then the earmarked run, if any.
    run_columns, repo_columns = RepoRun._meta.concrete_fields, Repository._meta.concrete_fields
    quote = db.ops.quote_name
    columns = ", ".join(
        [f"m.{quote(f.column)}" for f in run_columns]
        + [f"p.{quote(f.column)}" for f in repo_columns]
        + ["c.launched_at", "k.id", "kp.url", "k.ref"]
    )
    result = (
        f"SELECT (SELECT count(*) FROM done), (SELECT array_agg(id ORDER BY position) "  # noqa: S608
        f"FROM made), {columns} FROM (SELECT 1) AS one "
        f"LEFT JOIN moved m ON true LEFT JOIN {repos} p ON p.id = m.repository_id "
        f"LEFT JOIN {campaigns} c ON c.id = m.campaign_id "
        f"LEFT JOIN mark k ON true LEFT JOIN {repos} kp ON kp.id = k.repository_id"
    )
    sql = f"WITH {', '.join(ctes)}, {handoff}, mark AS ({mark}), made AS ({made}) {result}"
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        moved, made_ids, *row = cursor.fetchone()
    row, (mark_id, mark_url, mark_ref) = row[:-3], row[-3:]
    if row[0] is None:
        return RunEnd(bool(moved))
    run = row_from_db(RepoRun, run_columns, row[: len(run_columns)], alias="m")
    run.repository = row_from_db(Repository, repo_columns, row[len(run_columns) : -1], alias="p")
    run.campaign_launched_at = row[-1]
    run.variants_new = None
    if variants and made_ids is not None and len(made_ids) == len(variants):
        run.variants_new = [
            row_stored(Variant(pk=pk, run=run, name=name, position=i))
            for i, (pk, name) in enumerate(zip(made_ids, variants, strict=True))
        ]
    earmarked = Earmark(mark_id, mark_url, mark_ref) if mark_id is not None else None
    return RunEnd(bool(moved), run.pk, run, earmarked)


def _variants_new_sql(names: Sequence[str], launched_at) -> tuple[str, list]:
    """The `made` CTE of `run_succeed`: the handed run's variant rows, pending, as
    `pipeline._variants_ensure` would insert them on a first attempt; nothing (and no row
    returned) without names, if the run was claimed before (its rows may exist: those that
    conflict are skipped, and the pipeline reads them), or if the campaign was revised since
    `launched_at` (its variants may have changed)."""
    if not names:
        return "SELECT NULL::bigint AS id, 0 AS position WHERE false", []
    sql, blank = _variants_new_statement(len(names))
    values = [*blank, launched_at]
    for i, name in enumerate(names):
        values += [name, i]
    return sql, values


@lru_cache(maxsize=8)
def _variants_new_statement(count: int) -> tuple[str, tuple]:
    """`_variants_new_sql`'s statement for `count` variants, and its first values: the columns
    other than run, name and position, as a new row has them."""
    meta, quote = Variant._meta, connection.ops.quote_name
    blank = Variant(name="", position=0)
    fields = [f for f in meta.concrete_fields if f.name not in ("id", "run", "name", "position")]
    named = [meta.get_field(name) for name in ("run", "name", "position")]
    columns = ", ".join(quote(f.column) for f in [*named, *fields])
    marks = ", ".join(f"%s::{f.cast_db_type(connection)}" for f in fields)
    rows = ", ".join(["(%s::varchar, %s::integer)"] * count)
    campaigns = Campaign._meta.db_table
    sql = (
        f"INSERT INTO {meta.db_table} ({columns}) SELECT m.id, v.name, v.position, {marks} "  # noqa: S608
        f"FROM moved m JOIN {campaigns} c ON c.id = m.campaign_id AND c.launched_at = %s "
        f"CROSS JOIN (VALUES {rows}) AS v (name, position) WHERE m.attempt = 1 "
        "ON CONFLICT DO NOTHING RETURNING id, position"
    )
    return sql, tuple(f.get_db_prep_save(f.pre_save(blank, add=True), connection) for f in fields)


def _diff_row_sql(row: DiffRow, *, when: str) -> tuple[str, list]:
    """An upsert (or a delete) of a receiver's `DiffRow`, done only `when`."""
    db = connections[DEFAULT_DB_ALIAS]  # looked up once (see core.rows)
    meta, quote = row.model._meta, db.ops.quote_name
    key = meta.get_field(row.key)
    if row.values is None:
        sql = f"DELETE FROM {meta.db_table} WHERE {quote(key.column)} = %s AND {when}"  # noqa: S608
        return sql, [key.get_db_prep_save(row.key_value, db)]
    fields = [meta.get_field(name) for name in row.values]
    columns = ", ".join(quote(f.column) for f in fields)
    marks = ", ".join(f"%s::{f.cast_db_type(db)}" for f in fields)
    updates = ", ".join(
        f"{quote(f.column)} = EXCLUDED.{quote(f.column)}" for f in fields if f.column != key.column
    )
    sql = (
        f"INSERT INTO {meta.db_table} ({columns}) SELECT {marks} WHERE {when} "
        f"ON CONFLICT ({quote(key.column)}) DO UPDATE SET {updates}"
    )
    values = [f.get_db_prep_save(v, db) for f, v in zip(fields, row.values.values(), strict=True)]
    return sql, values


def campaign_finish_if_done(*, campaign_id: int) -> bool:
    """Mark a running campaign completed once every run is final."""
    if RepoRun.objects.filter(campaign_id=campaign_id).exclude(state__in=RUN_FINAL_STATES).exists():
        return False
    now = timezone.now()
    with transaction.atomic():
        moved = Campaign.objects.filter(pk=campaign_id, state=CampaignState.RUNNING).update(
            state=CampaignState.COMPLETED, finished_at=now, updated_at=now
        )
        if moved:
            campaign = Campaign.objects.get(pk=campaign_id)
            counts = dict(
                RepoRun.objects.filter(campaign_id=campaign_id)
                .values_list("state")
                .annotate(n=Count("id"))
            )
            audit_record(
                action="campaign.campaign.updated",
                actor_type="system",
                target=campaign,
                context={"campaign_id": campaign_id},
                changes={"state": [CampaignState.RUNNING, CampaignState.COMPLETED]},
                payload={"runs": counts},
            )
    return bool(moved)


_ticked_in_this_process = False


def campaigns_tick() -> dict:
    """Periodic housekeeping: requeue runs whose worker died, resend lost messages, dispatch,
    and complete finished campaigns."""
    global _ticked_in_this_process
    now = timezone.now()
    lease = timedelta(seconds=settings.RUN_LEASE_S)
    dead = Q(heartbeat_at__lt=now - lease)
    resend_before = now - lease * 4
    if settings.EMBEDDED and not _ticked_in_this_process:
        # One process holds the in-memory broker and the only worker: after a restart every
        # queued message is gone and every run another process held is orphaned.
        dead |= ~Q(worker=worker_name())
        resend_before = now
    _ticked_in_this_process = True
    stale = runs_transition(
        runs=RepoRun.objects.filter(
            dead,
            state=RunState.RUNNING,
            campaign__state__in=DISPATCH_STATES,
        ),
        from_states=[RunState.RUNNING],
        to_state=RunState.QUEUED,
        queued_at=now,
        worker="",
    )
    # A queued run whose message died with a worker: sending it again is harmless, because
    # only one task can move it from queued to running.
    lost = list(
        RepoRun.objects.filter(
            state=RunState.QUEUED,
            queued_at__lt=resend_before,
            campaign__state__in=DISPATCH_STATES,
        ).values_list("pk", flat=True)[:1000]
    )
    if lost:
        RepoRun.objects.filter(pk__in=lost, state=RunState.QUEUED).update(queued_at=now)
    if stale or lost:
        logger.warning("requeueing %d stale and %d lost runs", len(stale), len(lost))
        runs_enqueue(stale + lost)
    dispatched = runs_dispatch()
    finished = [
        cid
        for cid in Campaign.objects.filter(state=CampaignState.RUNNING).values_list("pk", flat=True)
        if campaign_finish_if_done(campaign_id=cid)
    ]
    return {"stale": stale, "lost": lost, "dispatched": dispatched, "finished": finished}


# --- the pipeline ---------------------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
