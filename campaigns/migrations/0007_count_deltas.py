"""Campaign counts kept as the rows change: CountDelta rows written by triggers on RepoRun.

Each insert, delete or state change of runs adds one delta row per statement on PostgreSQL
(statement triggers over the transition tables: a launch inserting 10,000 runs adds one row) and
one per changed row on SQLite. Existing runs are counted into one row per campaign.
"""

# ruff: noqa: S608 - the SQL is built from the constant state names below, never from input

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0006_run_image_baseline"),
    ]

    operations = [
        migrations.CreateModel(
            name="CountDelta",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("campaign_id", models.BigIntegerField(db_index=True)),
                ("pending", models.IntegerField(db_default=0)),
                ("queued", models.IntegerField(db_default=0)),
                ("running", models.IntegerField(db_default=0)),
                ("succeeded", models.IntegerField(db_default=0)),
                ("failed", models.IntegerField(db_default=0)),
                ("cancelled", models.IntegerField(db_default=0)),
                ("todo", models.IntegerField(db_default=0)),
                ("approved", models.IntegerField(db_default=0)),
                ("rejected", models.IntegerField(db_default=0)),
                ("published", models.IntegerField(db_default=0)),
            ],
        ),
    ]


STATES = ("pending", "queued", "running", "succeeded", "failed", "cancelled")
COLUMNS = ", ".join(STATES)


def _pg_sql() -> list[str]:
    inserted = ", ".join(f"count(*) FILTER (WHERE state = '{s}')" for s in STATES)
    deleted = ", ".join(f"-count(*) FILTER (WHERE state = '{s}')" for s in STATES)
    moved = ", ".join(f"sum((n.state = '{s}')::int - (o.state = '{s}')::int)" for s in STATES)
    head = f"INSERT INTO campaigns_countdelta (campaign_id, {COLUMNS})"
    function = f"""
        CREATE OR REPLACE FUNCTION convoy_run_counts() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                {head} SELECT campaign_id, {inserted} FROM new_rows GROUP BY campaign_id;
            ELSIF TG_OP = 'DELETE' THEN
                {head} SELECT campaign_id, {deleted} FROM old_rows GROUP BY campaign_id;
            ELSE
                {head} SELECT n.campaign_id, {moved}
                FROM new_rows n JOIN old_rows o ON o.id = n.id
                WHERE n.state <> o.state GROUP BY n.campaign_id;
            END IF;
            RETURN NULL;
        END $$"""
    refs = {
        "INSERT": "NEW TABLE AS new_rows",
        "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "DELETE": "OLD TABLE AS old_rows",
    }
    return [function] + [
        f"CREATE TRIGGER campaigns_reporun_counts_{op.lower()} AFTER {op} ON campaigns_reporun "
        f"REFERENCING {ref} FOR EACH STATEMENT EXECUTE FUNCTION convoy_run_counts()"
        for op, ref in refs.items()
    ]


def _sqlite_sql() -> list[str]:
    head = f"INSERT INTO campaigns_countdelta (campaign_id, {COLUMNS})"
    inserted = ", ".join(f"NEW.state = '{s}'" for s in STATES)
    deleted = ", ".join(f"-(OLD.state = '{s}')" for s in STATES)
    moved = ", ".join(f"(NEW.state = '{s}') - (OLD.state = '{s}')" for s in STATES)
    return [
        "CREATE TRIGGER campaigns_reporun_counts_insert AFTER INSERT ON campaigns_reporun "
        f"BEGIN {head} VALUES (NEW.campaign_id, {inserted}); END",
        "CREATE TRIGGER campaigns_reporun_counts_update AFTER UPDATE OF state ON "
        "campaigns_reporun WHEN OLD.state <> NEW.state "
        f"BEGIN {head} VALUES (NEW.campaign_id, {moved}); END",
        "CREATE TRIGGER campaigns_reporun_counts_delete AFTER DELETE ON campaigns_reporun "
        f"BEGIN {head} VALUES (OLD.campaign_id, {deleted}); END",
    ]


def triggers_create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        statements = _pg_sql()
    elif vendor == "sqlite":
        statements = _sqlite_sql()
    else:
        raise RuntimeError(f"no count triggers for database vendor {vendor!r}")
    for sql in statements:
        schema_editor.execute(sql)
    existing = ", ".join(f"sum(CASE WHEN state = '{s}' THEN 1 ELSE 0 END)" for s in STATES)
    schema_editor.execute(
        f"INSERT INTO campaigns_countdelta (campaign_id, {COLUMNS}) "
        f"SELECT campaign_id, {existing} FROM campaigns_reporun GROUP BY campaign_id"
    )


def triggers_drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    on = " ON campaigns_reporun" if vendor == "postgresql" else ""
    for op in ("insert", "update", "delete"):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS campaigns_reporun_counts_{op}{on}")
    if vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS convoy_run_counts()")


Migration.operations.append(migrations.RunPython(triggers_create, triggers_drop))
