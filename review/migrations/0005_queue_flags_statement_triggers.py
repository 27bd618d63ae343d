"""PostgreSQL: the queue-flag triggers that bulk writes fire become statement triggers.

Row triggers made bulk inserts of variants (and a revision moving a whole campaign's runs out
of "succeeded") run the flag refresh once per row: 270,000 variants took minutes. Statement
triggers over the transition tables refresh the affected runs in one set per statement. A
variant's update (one row at a time, in the pipeline; transition tables would copy its patch),
reviews and changesets keep their row triggers. SQLite keeps row triggers (one writer, small).
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


def _refresh(runs: str) -> str:
    """One statement that brings the flags of the runs whose ids `runs` selects up to date."""
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
        {HEAD} SELECT campaign_id, {DIFFERENCE} FROM changed GROUP BY campaign_id;"""


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
        f"IF EXISTS ({MOVED}) THEN" + _refresh(MOVED) + " END IF;",
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
    """Back to 0004's row triggers: unapply 0004 and apply it again."""
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table, *_ in STATEMENT_TRIGGERS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {name}()")


class Migration(migrations.Migration):
    dependencies = [("review", "0004_queue_flags")]

    operations = [migrations.RunPython(statement_triggers, statement_triggers_drop)]
