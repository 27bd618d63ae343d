"""SQL statements Convoy issues for one repository run: two variants on bubblewrap, through the
real executor (`run_execute`, called in this process), on the production database.

Counted: every statement sent through Django's cursors by any thread of this process while
the run executes: the executor's thread (also seen by `CaptureQueriesContext`), the variants'
threads, the heartbeat and the long-lived log writer threads (which keep their own
connections). A log batch's `COPY ... FROM STDIN` goes through psycopg's own cursor and is
counted as one statement too (psycopg's `Cursor.copy` is wrapped, as Django's cursors are);
BEGIN, COMMIT and ROLLBACK are counted (each is a round trip).
"""

import json
import threading
from collections import Counter

import psycopg
import pytest
from django.db import connection
from django.db.backends import utils as db_utils
from django.db.backends.base import base as db_base
from django.test.utils import CaptureQueriesContext

from audit.chain import canonical_json
from audit.models import AuditEvent
from campaigns.models import RepoRun, RunState, RunTransition, VariantState
from campaigns.pipeline import run_execute
from campaigns.services import campaign_create, campaign_launch
from sandboxes.models import Sandbox, SandboxCommand
from tests.factories import repos_make, spec_for

pytestmark = pytest.mark.django_db(transaction=True)

# Before issue 20's changes this run took 236 statements (measured with this test at the
# commit before them); the acceptance point is at most half of that. It now takes about 82 (a
# command's header is its own log batch when its output comes later than 15 ms): each
# sandbox state change and each command's start and finish is one statement together with its
# audit event (no BEGIN/COMMIT around two statements), and so is each run transition with its
# transition row (docs/benchmarks.md). Two parts depend
# on timing: how the commands' output falls into log batches (one statement each, at least one
# per command) and how often the executor asks whether the run was cancelled (at most once a
# second, so more on a loaded machine). The budget leaves room for that and no more.
STATEMENTS_BEFORE = 236
STATEMENTS_MAX = 90


class _AllThreadsQueries:
    """Counts statements sent through any Django cursor, from any thread, while active."""

    def __init__(self) -> None:
        self.by_thread: Counter[str] = Counter()
        self.sql: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _note(self, sql: str) -> None:
        name = threading.current_thread().name
        with self._lock:
            self.by_thread[name] += 1
            self.sql.append((name, sql))

    def __enter__(self):
        self._execute = db_utils.CursorWrapper._execute
        self._executemany = db_utils.CursorWrapper._executemany
        counter = self

        def _execute(cursor, sql, params, *ignored):
            counter._note(sql)
            return counter._execute(cursor, sql, params, *ignored)

        def _executemany(cursor, sql, param_list, *ignored):
            counter._note(sql)
            return counter._executemany(cursor, sql, param_list, *ignored)

        self._debug_transaction = db_base.debug_transaction

        def debug_transaction(connection, sql):
            counter._note(sql)  # BEGIN, COMMIT, ROLLBACK: round trips too
            return counter._debug_transaction(connection, sql)

        self._copy = psycopg.Cursor.copy

        def copy(cursor, statement, *args, **kwargs):
            counter._note(str(statement))
            return counter._copy(cursor, statement, *args, **kwargs)

        db_utils.CursorWrapper._execute = _execute
        db_utils.CursorWrapper._executemany = _executemany
        db_base.debug_transaction = debug_transaction
        psycopg.Cursor.copy = copy
        return self

    def __exit__(self, *exc) -> None:
        db_utils.CursorWrapper._execute = self._execute
        db_utils.CursorWrapper._executemany = self._executemany
        db_base.debug_transaction = self._debug_transaction
        psycopg.Cursor.copy = self._copy

    @property
    def total(self) -> int:
        return sum(self.by_thread.values())


def _kind(sql: str) -> str:
    words = sql.split()
    head = words[0].upper() if words else ""
    if head == "WITH" and "audit_auditevent" in sql:  # a change and its event in one statement
        return f"{_kind(sql.split(' AS (', 1)[1])} + audit event"
    if head == "WITH" and "sandboxes_logline" in sql:
        return "log batch"
    if head in {"INSERT", "UPDATE", "DELETE"}:
        table = words[2] if head != "UPDATE" else words[1]
        return f"{head} {table.strip(chr(34))}"
    if head == "SELECT" and " FROM " in sql:
        return f"SELECT {sql.split(' FROM ', 1)[1].split()[0].strip(chr(34))}"  # noqa: S608
    return head


def test_one_run_with_two_variants_on_bwrap_stays_within_its_statement_budget(
    transactional_db, manager
):
    tag, _ = repos_make(1)
    spec = spec_for(tag, name="queries-per-run", backend="bwrap")
    spec = spec.replace("  - {name: aggressive, env: {STYLE: aggressive}}\n", "")
    campaign = campaign_launch(campaign=campaign_create(actor=manager, source=spec), actor=manager)
    run = RepoRun.objects.get(campaign=campaign)
    assert run.state == RunState.QUEUED

    with _AllThreadsQueries() as every, CaptureQueriesContext(connection) as executor:
        assert run_execute(run_id=run.pk) == "succeeded"

    run.refresh_from_db()
    assert [v.state for v in run.variants.order_by("position")] == [VariantState.COMPLETED] * 2
    kinds = Counter(_kind(sql) for _, sql in every.sql)
    report = "\n".join(f"{n:4d}  {kind}" for kind, n in kinds.most_common())
    print(
        f"\nSQL statements for one run with two variants: {every.total} in all "
        f"({len(executor.captured_queries)} on the executor's connection); by thread: "
        f"{dict(every.by_thread)}\n{report}"
    )
    assert every.total <= STATEMENTS_MAX <= STATEMENTS_BEFORE // 2, report

    # Fewer statements, the same trail: each command has its started and completed event, and
    # every event written together with its change is canonical JSON (what the sealer hashes).
    events = AuditEvent.objects.filter(run_id=run.pk)
    commands = SandboxCommand.objects.filter(sandbox__run_id=run.pk)
    assert commands.count() == 6  # setup, the baseline's step, each variant's transform and check
    for action in ("sandbox.exec.started", "sandbox.exec.completed"):
        named = sorted(
            json.loads(e.body)["payload"]["command_id"] for e in events.filter(action=action)
        )
        assert named == sorted(commands.values_list("pk", flat=True)), action
    sandboxes = Sandbox.objects.filter(run_id=run.pk).count()
    assert sandboxes == 4
    created = events.filter(action__in=["sandbox.sandbox.created", "sandbox.fork.created"])
    assert created.count() == events.filter(action="sandbox.sandbox.terminated").count() == 4
    assert all(canonical_json(json.loads(e.body)) == e.body for e in events)


# A one-variant run as the sed benchmark makes (no setup, no validation): 32.4 statements per
# run at the start of the session that measured it (docs/benchmarks.md), 24.5 after it. Now the
# first attempt's variant row is one INSERT (no BEGIN/COMMIT around it), the claim's fresh read
# of the state serves as the first cancellation check, the run's success and the hand-off of its
# slot to the campaign's next run are one statement (were BEGIN, two, COMMIT), and a run whose
# one sandbox went to the teardown thread does not look for live ones at its end. Since then
# (about 11 a run): on PostgreSQL, for a campaign without secrets, the lone variant's end, its
# diff's review digest and the run's base commit go into that statement too (were BEGIN, the
# variant, the digest, COMMIT, and the base commit's own UPDATE after the checkout), and it
# returns the next run loaded (was a SELECT). Then the variant row of each run after the
# first is made by that statement too (the hand-off that gives the run its slot): 42 statements
# for the three runs below became 40.
SED_SPEC = """\
name: sed-queries
backend: bwrap
repos: {{tag: {tag}}}
max_parallel: 1
transform: {{run: "git ls-files -z -- '*.py' | xargs -0 sed -i 's/assertEquals(/assertEqual(/g'"}}
"""
SED_STATEMENTS_MAX = 12
# The last run's carrier then completes the campaign (a read, BEGIN, the update, two reads, its
# audit event, COMMIT) and dispatches (BEGIN, a lock, reads, COMMIT): once per campaign.
CAMPAIGN_END_MAX = 12


def test_one_variant_runs_carried_one_after_another_stay_within_their_statement_budget(
    transactional_db, manager
):
    tag, _ = repos_make(3)
    campaign = campaign_create(actor=manager, source=SED_SPEC.format(tag=tag))
    campaign = campaign_launch(campaign=campaign, actor=manager)
    runs = RepoRun.objects.filter(campaign=campaign).order_by("pk")
    first = runs.get(state=RunState.QUEUED)  # max_parallel 1: the others wait, pending

    with _AllThreadsQueries() as every:
        # One call carries all three: each run's end hands its slot to the next pending run.
        assert run_execute(run_id=first.pk) == "succeeded"

    assert [r.state for r in runs] == [RunState.SUCCEEDED] * 3
    assert all(r.variants.get().files_changed == 1 for r in runs)
    moves = Counter(
        (t.from_state, t.to_state) for t in RunTransition.objects.filter(campaign=campaign)
    )
    assert moves[(RunState.RUNNING, RunState.SUCCEEDED)] == 3
    assert moves[(RunState.PENDING, RunState.QUEUED)] == 3  # launch: 1, hand-offs: 2
    assert moves[(RunState.QUEUED, RunState.RUNNING)] == 3
    kinds = Counter(_kind(sql) for _, sql in every.sql)
    report = "\n".join(f"{n:4d}  {kind}" for kind, n in kinds.most_common())
    print(f"\nSQL statements for three one-variant runs: {every.total}\n{report}")
    assert every.total <= 3 * SED_STATEMENTS_MAX + CAMPAIGN_END_MAX, report
