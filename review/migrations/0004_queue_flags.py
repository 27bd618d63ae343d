"""Review buckets kept as the rows change: QueueFlags per run, differences to CountDelta.

A run's flags (1 todo, 2 approved, 4 rejected, 8 published; 0 unless it succeeded) are what
review.selectors' queue filters say about it. Triggers recompute them when the run enters or
leaves "succeeded", when a variant of a succeeded run changes its state or diff, and when its
review or changeset is written, and add the difference to campaigns_countdelta. On PostgreSQL a
review's or changeset's trigger first locks the run row, so a concurrent state change of the run
is seen (its trigger ran first, or this one waits for it). Existing runs are flagged here.
"""

# ruff: noqa: S608 - the SQL is built from constants below, never from input

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("review", "0003_decision_withdrawal_digest_label"),
        ("campaigns", "0007_count_deltas"),
    ]

    operations = [
        migrations.CreateModel(
            name="QueueFlags",
            fields=[
                ("run_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("campaign_id", models.BigIntegerField(db_index=True)),
                ("flags", models.SmallIntegerField(default=0)),
            ],
        ),
    ]


# The buckets of run `r`, as review.selectors.review_counts counts them.
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
BUCKETS = ("todo", "approved", "rejected", "published")
DIFFERENCE = ", ".join(
    f"sum(((flags_now >> {bit}) & 1) - ((flags_was >> {bit}) & 1))" for bit in range(4)
)
GONE = ", ".join(f"-((flags >> {bit}) & 1)" for bit in range(4))
HEAD = f"INSERT INTO campaigns_countdelta (campaign_id, {', '.join(BUCKETS)})"


def _refresh(where: str) -> list[str]:
    """Statements that bring the flags of the runs matching `where` (on `r`) up to date."""
    return [
        f"""{HEAD} SELECT campaign_id, {DIFFERENCE} FROM (
            SELECT r.campaign_id, COALESCE(q.flags, 0) AS flags_was, {FLAGS} AS flags_now
            FROM campaigns_reporun r LEFT JOIN review_queueflags q ON q.run_id = r.id
            WHERE {where}) AS f
        WHERE flags_now <> flags_was GROUP BY campaign_id""",
        f"""INSERT INTO review_queueflags (run_id, campaign_id, flags)
        SELECT r.id, r.campaign_id, {FLAGS} FROM campaigns_reporun r
        WHERE {where} AND {FLAGS} <> COALESCE(
            (SELECT q.flags FROM review_queueflags q WHERE q.run_id = r.id), 0)
        ON CONFLICT (run_id) DO UPDATE SET flags = excluded.flags""",
    ]


def _forget(run: str) -> list[str]:
    """Statements that take a deleted run's flags out of the counts."""
    return [
        f"""{HEAD} SELECT campaign_id, {GONE} FROM review_queueflags
        WHERE run_id = {run} AND flags <> 0""",
        f"DELETE FROM review_queueflags WHERE run_id = {run}",
    ]


# (trigger name, table, event, row condition, the run's id in the row, lock the run first)
TRIGGERS = [
    (
        "review_flags_run_insert",
        "campaigns_reporun",
        "INSERT",
        "NEW.state = 'succeeded'",
        "NEW.id",
        False,
    ),
    (
        "review_flags_run_update",
        "campaigns_reporun",
        "UPDATE OF state",
        "OLD.state <> NEW.state AND 'succeeded' IN (OLD.state, NEW.state)",
        "NEW.id",
        False,
    ),
    ("review_flags_variant_insert", "campaigns_variant", "INSERT", None, "NEW.run_id", False),
    (
        "review_flags_variant_update",
        "campaigns_variant",
        "UPDATE OF state, diff_sha256",
        "OLD.state <> NEW.state OR OLD.diff_sha256 <> NEW.diff_sha256",
        "NEW.run_id",
        False,
    ),
    ("review_flags_variant_delete", "campaigns_variant", "DELETE", None, "OLD.run_id", False),
    ("review_flags_review_insert", "review_runreview", "INSERT", None, "NEW.run_id", True),
    (
        "review_flags_review_update",
        "review_runreview",
        "UPDATE OF state, approved_hash, variant_id",
        None,
        "NEW.run_id",
        True,
    ),
    ("review_flags_review_delete", "review_runreview", "DELETE", None, "OLD.run_id", True),
    ("review_flags_changeset_insert", "review_changeset", "INSERT", None, "NEW.run_id", True),
    ("review_flags_changeset_delete", "review_changeset", "DELETE", None, "OLD.run_id", True),
]
# A variant's change matters only once its run succeeded (the runs's own trigger covers the
# rest): checking that first keeps the pipeline's variant writes cheap.
ONLY_SUCCEEDED = "r.id = {run} AND r.state = 'succeeded'"


def _pg_sql() -> list[str]:
    out = []
    for name, table, event, when, run, lock in TRIGGERS:
        where = ONLY_SUCCEEDED.format(run=run) if "variant" in table else f"r.id = {run}"
        body = ";\n".join(
            ([f"PERFORM 1 FROM campaigns_reporun WHERE id = {run} FOR UPDATE"] if lock else [])
            + _refresh(where)
        )
        out.append(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body};\nRETURN NULL;\nEND $$"
        )
        condition = f" WHEN ({when})" if when else ""
        out.append(
            f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{condition} "
            f"EXECUTE FUNCTION {name}()"
        )
    body = ";\n".join(_forget("OLD.id"))
    out.append(
        "CREATE OR REPLACE FUNCTION review_flags_run_delete() RETURNS trigger "
        f"LANGUAGE plpgsql AS $$\nBEGIN\n{body};\nRETURN NULL;\nEND $$"
    )
    out.append(
        "CREATE TRIGGER review_flags_run_delete AFTER DELETE ON campaigns_reporun "
        "FOR EACH ROW EXECUTE FUNCTION review_flags_run_delete()"
    )
    return out


def _sqlite_sql() -> list[str]:
    out = []
    for name, table, event, when, run, _ in TRIGGERS:
        where = ONLY_SUCCEEDED.format(run=run) if "variant" in table else f"r.id = {run}"
        condition = f" WHEN {when}" if when else ""
        body = "; ".join(_refresh(where))
        out.append(f"CREATE TRIGGER {name} AFTER {event} ON {table}{condition} BEGIN {body}; END")
    body = "; ".join(_forget("OLD.id"))
    out.append(
        "CREATE TRIGGER review_flags_run_delete AFTER DELETE ON campaigns_reporun "
        f"BEGIN {body}; END"
    )
    return out


def triggers_create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        statements = _pg_sql()
    elif vendor == "sqlite":
        statements = _sqlite_sql()
    else:
        raise RuntimeError(f"no review flag triggers for database vendor {vendor!r}")
    for sql in statements:
        schema_editor.execute(sql)
    for sql in _refresh("r.state = 'succeeded'"):
        schema_editor.execute(sql)


def triggers_drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    names = [(t[0], t[1]) for t in TRIGGERS] + [("review_flags_run_delete", "campaigns_reporun")]
    for name, table in names:
        on = f" ON {table}" if vendor == "postgresql" else ""
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}{on}")
        if vendor == "postgresql":
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {name}()")


Migration.operations.append(migrations.RunPython(triggers_create, triggers_drop))
