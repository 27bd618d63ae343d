"""PostgreSQL: the queue-flag triggers that bulk writes fire become statement triggers, and
every flag refresh is planned when it runs.

Row triggers made bulk inserts of variants (and a revision moving a whole campaign's runs out
of "succeeded") run the flag refresh once per row; worse, PL/pgSQL kept the plan made when the
tables were empty (a sequential scan of the variants per run), so 270,000 bulk-inserted
variants took more than ten minutes. Statement triggers over the transition tables refresh the
affected runs as one set per statement; for inserts and deletes (bulk by nature) the refresh
runs through EXECUTE, so it is planned for the tables as they are. A variant's update (one row at a time, in the pipeline; transition
tables would copy its patch), reviews and changesets keep row triggers. SQLite keeps 0004's row
triggers (one writer; its planner has no such cache).
"""

# ruff: noqa: S608 - the SQL is built from constants below, never from input

from django.db import migrations

FLAGS = """CASE WHEN r.state <> 'succeeded' THEN 0 ELSE (
    SELECT (CASE WHEN (rv.run_id IS NULL OR rv.state IN ('unreviewed', 'picked')
                       OR (rv.state = 'approved'
                           AND NOT COALESCE(rv.approved_hash = v.diff_sha256, FALSE)))
                  AND EXISTS (SELECT 1 FROM campaigns_variant cv WHERE cv.run_id = r.id
                              AND cv.state = 'completed' AND cv.diff_sha256 <> '')
                 THEN 1 ELSE 0 END)
         + (CASE WHEN rv.state = 'approved' AND COALESCE(rv.approved_hash = v.diff_sha256, FALSE)
                      AND cs.id IS NULL THEN 2 ELSE 0 END)
         + (CASE WHEN rv.state = 'rejected' THEN 4 ELSE 0 END)
         + (CASE WHEN cs.id IS NOT NULL THEN 8 ELSE 0 END)
    FROM (SELECT 1 AS one) AS single
    LEFT JOIN review_runreview rv ON rv.run_id = r.id
    LEFT JOIN campaigns_variant v ON v.id = rv.variant_id
    LEFT JOIN review_changeset cs ON cs.run_id = r.id
) END"""
HEAD = "INSERT INTO campaigns_countdelta (campaign_id, todo, approved, rejected, published)"
DIFFERENCE = ", ".join(
    f"sum(((flags_now >> {bit}) & 1) - ((flags_was >> {bit}) & 1))" for bit in range(4)
)
GONE = ", ".join(f"-sum((flags >> {bit}) & 1)" for bit in range(4))


def _refresh(runs: str, *, planned_each_time: bool = True) -> str:
    """PL/pgSQL running one statement that brings the flags of the runs whose ids `runs`
    selects up to date: through EXECUTE (planned for the tables as they are, worth it for a
    bulk write), or as a static statement whose plan PL/pgSQL keeps (a run or two at a time,
    where planning this statement would cost more than running it)."""
    if planned_each_time:
        return f" EXECUTE {_quoted(_refresh_sql(runs))};"
    return f" {_refresh_sql(runs)};"


def _quoted(sql: str) -> str:
    return "'" + sql.replace("'", "''") + "'"


def _refresh_sql(runs: str) -> str:
    return f"""
        WITH changed AS (
            SELECT * FROM (
                SELECT r.id, r.campaign_id, COALESCE(q.flags, 0) AS flags_was,
                       {FLAGS} AS flags_now
                FROM campaigns_reporun r LEFT JOIN review_queueflags q ON q.run_id = r.id
                WHERE r.id IN ({runs})
            ) AS f WHERE flags_now <> flags_was
        ), stored AS (
            INSERT INTO review_queueflags (run_id, campaign_id, flags)
            SELECT id, campaign_id, flags_now FROM changed
            ON CONFLICT (run_id) DO UPDATE SET flags = excluded.flags
        )
        {HEAD} SELECT campaign_id, {DIFFERENCE} FROM changed GROUP BY campaign_id"""


MOVED = (
    "SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id "
    "WHERE n.state <> o.state AND 'succeeded' IN (n.state, o.state)"
)
# (name, table, event, transition tables, PL/pgSQL body)
STATEMENT_TRIGGERS = [
    (
        "review_flags_runs_insert",
        "campaigns_reporun",
        "INSERT",
        "NEW TABLE AS new_rows",
        "IF EXISTS (SELECT 1 FROM new_rows WHERE state = 'succeeded') THEN"
        + _refresh("SELECT id FROM new_rows WHERE state = 'succeeded'")
        + " END IF;",
    ),
    (
        "review_flags_runs_update",
        "campaigns_reporun",
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        # Mostly one run finishing: a kept plan (a revision of a whole campaign reuses it too;
        # it looks runs up by id).
        f"IF EXISTS ({MOVED}) THEN" + _refresh(MOVED, planned_each_time=False) + " END IF;",
    ),
    (
        "review_flags_runs_delete",
        "campaigns_reporun",
        "DELETE",
        "OLD TABLE AS old_rows",
        f"""WITH gone AS (
            DELETE FROM review_queueflags WHERE run_id IN (SELECT id FROM old_rows)
            RETURNING campaign_id, flags)
        {HEAD} SELECT campaign_id, {GONE} FROM gone WHERE flags <> 0 GROUP BY campaign_id;""",
    ),
    (
        "review_flags_variants_insert",
        "campaigns_variant",
        "INSERT",
        "NEW TABLE AS new_rows",
        _refresh(
            "SELECT id FROM campaigns_reporun WHERE state = 'succeeded' "
            "AND id IN (SELECT run_id FROM new_rows)"
        ),
    ),
    (
        "review_flags_variants_delete",
        "campaigns_variant",
        "DELETE",
        "OLD TABLE AS old_rows",
        _refresh(
            "SELECT id FROM campaigns_reporun WHERE state = 'succeeded' "
            "AND id IN (SELECT run_id FROM old_rows)"
        ),
    ),
]
# 0004's row trigger functions, rewritten with the one-statement refresh: (name, run id, lock
# the run first).
ROW_FUNCTIONS = [
    ("review_flags_variant_update", "NEW.run_id", False),
    ("review_flags_review_insert", "NEW.run_id", True),
    ("review_flags_review_update", "NEW.run_id", True),
    ("review_flags_review_delete", "OLD.run_id", True),
    ("review_flags_changeset_insert", "NEW.run_id", True),
    ("review_flags_changeset_delete", "OLD.run_id", True),
]


def _row_body(run: str, lock: bool) -> str:
    # The run row is locked first so that a concurrent move of the run is seen (0004).
    if lock:
        first = f"PERFORM 1 FROM campaigns_reporun WHERE id = {run} FOR UPDATE;"
        return first + _refresh(run, planned_each_time=False)
    succeeded = f"SELECT id FROM campaigns_reporun WHERE id = {run} AND state = 'succeeded'"
    return _refresh(succeeded, planned_each_time=False)


# The row triggers of 0004 these replace (name, table).
REPLACED = [
    ("review_flags_run_insert", "campaigns_reporun"),
    ("review_flags_run_update", "campaigns_reporun"),
    ("review_flags_run_delete", "campaigns_reporun"),
    ("review_flags_variant_insert", "campaigns_variant"),
    ("review_flags_variant_delete", "campaigns_variant"),
]


def statement_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table in REPLACED:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {name}()")
    for name, run, lock in ROW_FUNCTIONS:
        schema_editor.execute(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{_row_body(run, lock)}\nRETURN NULL;\nEND $$"
        )
    for name, table, event, tables, body in STATEMENT_TRIGGERS:
        schema_editor.execute(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body}\nRETURN NULL;\nEND $$"
        )
        schema_editor.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {tables} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )


def statement_triggers_drop(apps, schema_editor):
    """Back to 0004's row triggers: unapply 0004 and apply it again (this drops the triggers
    that replaced them; 0004's unapply drops the row functions changed here)."""
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table, *_ in STATEMENT_TRIGGERS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {name}()")


class Migration(migrations.Migration):
    dependencies = [("review", "0004_queue_flags")]

    operations = [migrations.RunPython(statement_triggers, statement_triggers_drop)]
