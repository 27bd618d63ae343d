"""Run and variant states: the guarded transitions every move goes through, and a run's errors."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from django.core.exceptions import EmptyResultSet
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import QuerySet
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from campaigns.models import (
    RUN_TRANSITIONS,
    RepoRun,
    RunState,
    RunTransition,
    Variant,
    VariantState,
)
from core.errors import Conflict
from core.rows import assignments_prepared


class CampaignStateError(Conflict):
    """The campaign is not in a state that allows this action."""


class RunFailed(Exception):
    """A repository-level failure (fetch, checkout, setup): retrying will not help by itself."""


class RunStopped(Exception):
    """The run was cancelled or lost its lease while working."""


# --- transitions ----------------------------------------------------------------------------


def runs_transition(
    *, runs: QuerySet, from_states: Iterable[str], to_state: str, **fields
) -> list[int]:
    """Move every run in `runs` that is in one of `from_states` to `to_state`; return their ids.

    The only way run states change. Rows are locked first, so the ids returned are exactly the
    rows moved, and two workers can never both move the same run.
    """
    from_states = list(from_states)
    for state in from_states:
        if to_state not in RUN_TRANSITIONS[RunState(state)]:
            raise ValueError(f"illegal run transition {state} -> {to_state}")
    now = timezone.now()
    if len(from_states) == 1 and connections[runs.db].vendor == "postgresql":
        return _runs_move(runs, from_states[0], to_state, now, fields)
    # No savepoint when called inside a transaction (it is, at a run's end): nothing here is
    # caught and retried inside it, and a savepoint is two more round trips.
    with transaction.atomic(savepoint=False):
        rows = list(
            runs.select_for_update()
            .filter(state__in=from_states)
            .values_list("pk", "state", "campaign_id")
        )
        if not rows:
            return []
        ids = [pk for pk, _, _ in rows]
        moved = 0
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            moved += RepoRun.objects.filter(pk__in=chunk, state__in=from_states).update(
                state=to_state, **fields
            )
        assert moved == len(ids), "locked rows changed under the lock"
        RunTransition.objects.bulk_create(
            [
                RunTransition(
                    run_id=pk, campaign_id=cid, from_state=state, to_state=to_state, at=now
                )
                for pk, state, cid in rows
            ],
            batch_size=2000,
        )
    return ids


def _runs_move(runs: QuerySet, from_state: str, to_state: str, now, fields: dict) -> list[int]:
    """`runs_transition` from one state, on PostgreSQL: one statement, the update and its
    transition rows (a data-modifying CTE). The row lock the UPDATE takes and its re-check of
    the state under that lock give the same guarantee as the locking read: a run two workers
    race for moves once, and only the winner gets its id back. One statement commits as a
    whole, so no transaction is needed around it (five round trips become one)."""
    query = runs.filter(state=from_state).query.chain(UpdateQuery)
    query.add_update_values({"state": to_state, **fields})
    compiler = query.get_compiler(runs.db)
    compiler.pre_sql_setup()  # a filter across a join becomes `id IN (subquery)`
    try:
        update_sql, params = compiler.as_sql()
    except EmptyResultSet:  # `pk__in=[]`: Django compiles no statement for what matches nothing
        return []
    db = connections[runs.db]
    run_table = db.ops.quote_name(RepoRun._meta.db_table)
    # Only our table names and Django's compiled UPDATE are formatted in; values are parameters.
    transitions = db.ops.quote_name(RunTransition._meta.db_table)
    sql = (
        f"WITH moved AS ({update_sql} RETURNING {run_table}.id, {run_table}.campaign_id) "  # noqa: S608
        f"INSERT INTO {transitions} (run_id, campaign_id, from_state, to_state, at) "
        "SELECT id, campaign_id, %s, %s, %s FROM moved RETURNING run_id"
    )
    with db.cursor() as cursor:
        cursor.execute(sql, (*params, from_state, to_state, now))
        return sorted(row[0] for row in cursor.fetchall())


def run_transition(*, run_id: int, from_state: str, to_state: str, **fields) -> bool:
    return bool(
        runs_transition(
            runs=RepoRun.objects.filter(pk=run_id),
            from_states=[from_state],
            to_state=to_state,
            **fields,
        )
    )


def variant_transition(*, variant_id: int, from_state: str, to_state: str, **fields) -> bool:
    return bool(
        Variant.objects.filter(pk=variant_id, state=from_state).update(state=to_state, **fields)
    )


def variant_start(*, variant_id: int, started_at, sandbox_id: int | None = None) -> bool:
    """Pending → running, one attempt more, with its sandbox when it has one: what
    `variant_transition` would write, as one plain statement (it is on every run's path)."""
    values = {"state": VariantState.RUNNING, "started_at": started_at}
    if sandbox_id is not None:
        values["sandbox_id"] = sandbox_id
    sets, params = assignments_prepared(Variant, values)
    db = connections[DEFAULT_DB_ALIAS]  # looked up once (see core.rows)
    with db.cursor() as cursor:
        table = db.ops.quote_name(Variant._meta.db_table)
        cursor.execute(
            f"UPDATE {table} SET {sets}, attempt = attempt + 1 WHERE id = %s AND state = %s",  # noqa: S608
            [*params, variant_id, VariantState.PENDING.value],
        )
        return cursor.rowcount == 1


# --- errors ---------------------------------------------------------------------------------

_SHA_RE = re.compile(r"\b[0-9a-f]{7,64}\b")
_PATH_RE = re.compile(r"(?:/[\w.+@-]+)+/?")
_NUM_RE = re.compile(r"\d+")
_QUOTED_RE = re.compile(r"'[^']*'|\"[^\"]*\"")


def error_signature(text: str) -> tuple[str, str]:
    """(signature, summary) from the tail of an error: ids, paths and numbers normalised away,
    so the same failure in different repositories clusters together."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()][-3:]
    tail = " | ".join(lines)
    norm = _SHA_RE.sub("<sha>", tail)
    norm = _PATH_RE.sub("<path>", norm)
    norm = _QUOTED_RE.sub("'…'", norm)
    norm = _NUM_RE.sub("N", norm)
    return hashlib.sha256(norm.encode()).hexdigest()[:12], norm[:300]


# --- secrets --------------------------------------------------------------------------------
