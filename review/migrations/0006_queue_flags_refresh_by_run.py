"""PostgreSQL: the statement triggers' flag refresh starts from the run ids the statement
touched and looks each run up by its primary key.

0005's refresh selected `campaigns_reporun` rows `WHERE id IN (<the touched runs>)`, and a
variant's insert or delete picked them as "succeeded runs whose id is among the new rows'".
The planner chose how to join the two from the statistics: where they were those of the
campaign's launch (every run pending; autovacuum off, or not yet run), it estimated one
succeeded run and walked all of them through the state index for every variant inserted
(67 ms at 41,000 succeeded runs in the 100,000-run simulation, and growing with each). Here the
touched ids come first and each run is a LATERAL lookup (`LIMIT 1` keeps it one), so no plan can
read more runs than the statement touched. A run that is not "succeeded" gets flags 0 (the
flags' own CASE), so the refresh need not filter on the state; a variant's insert runs it only
when one of its runs has succeeded (looked up the same way), since planning the refresh was most
of the insert's cost.

Row triggers keep 0005's functions: they look one run up by its id already.
"""

# ruff: noqa: S608 - the SQL is built from constants, never from input

import importlib

from django.db import migrations

_0005 = importlib.import_module("review.migrations.0005_queue_flags_statement_triggers")


def _refresh_sql(runs: str) -> str:
    """0005's refresh, driven by `runs` (a query of run ids, duplicates allowed)."""
    return f"""
        WITH changed AS (
            SELECT * FROM (
                SELECT r.id, r.campaign_id, COALESCE(q.flags, 0) AS flags_was,
                       {_0005.FLAGS} AS flags_now
                FROM (SELECT DISTINCT run_id FROM ({runs}) AS touched(run_id)) AS ids
                CROSS JOIN LATERAL (
                    SELECT * FROM campaigns_reporun WHERE id = ids.run_id LIMIT 1
                ) AS r
                LEFT JOIN review_queueflags q ON q.run_id = r.id
            ) AS f WHERE flags_now <> flags_was
        ), stored AS (
            INSERT INTO review_queueflags (run_id, campaign_id, flags)
            SELECT id, campaign_id, flags_now FROM changed
            ON CONFLICT (run_id) DO UPDATE SET flags = excluded.flags
        )
        {_0005.HEAD} SELECT campaign_id, {_0005.DIFFERENCE} FROM changed GROUP BY campaign_id"""


def _executed(runs: str) -> str:
    """Planned when it runs (inserts and deletes are bulk by nature)."""
    return f" EXECUTE {_0005._quoted(_refresh_sql(runs))};"


# (function, body): the statement triggers' functions; the triggers themselves stay.
FUNCTIONS = [
    (
        "review_flags_runs_insert",
        "IF EXISTS (SELECT 1 FROM new_rows WHERE state = 'succeeded') THEN"
        + _executed("SELECT id FROM new_rows WHERE state = 'succeeded'")
        + " END IF;",
    ),
    (
        "review_flags_runs_update",
        # Mostly one run finishing: a kept plan, which can no longer be a bad one.
        f"IF EXISTS ({_0005.MOVED}) THEN {_refresh_sql(_0005.MOVED)}; END IF;",
    ),
    (
        # One variant at a time, at a run's start (its run is running): only the guard, a key
        # lookup with a kept plan, runs then; planning the refresh cost 0.8 ms per insert. The
        # state is tested outside the LIMIT, which no condition crosses: inside, the planner
        # chose the state index by the launch's statistics and read every succeeded run.
        "review_flags_variants_insert",
        "IF EXISTS (SELECT 1 FROM new_rows n CROSS JOIN LATERAL (SELECT state FROM "
        "campaigns_reporun WHERE id = n.run_id LIMIT 1) AS r WHERE r.state = 'succeeded') THEN"
        + _executed("SELECT run_id FROM new_rows")
        + " END IF;",
    ),
    ("review_flags_variants_delete", _executed("SELECT run_id FROM old_rows")),
]


def _replace(schema_editor, functions) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, body in functions:
        schema_editor.execute(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body}\nRETURN NULL;\nEND $$"
        )


def refresh_by_run(apps, schema_editor):
    _replace(schema_editor, FUNCTIONS)


def refresh_as_0005(apps, schema_editor):
    wanted = {name for name, _ in FUNCTIONS}
    _replace(
        schema_editor,
        [(name, body) for name, _, _, _, body in _0005.STATEMENT_TRIGGERS if name in wanted],
    )


class Migration(migrations.Migration):
    dependencies = [("review", "0005_queue_flags_statement_triggers")]

    operations = [migrations.RunPython(refresh_by_run, refresh_as_0005)]
