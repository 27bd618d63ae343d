"""SQLite: refuse an INSERT that collides with an audit row. `REPLACE` (and `INSERT OR REPLACE`)
deletes the old row without firing its DELETE trigger while recursive triggers are off (SQLite's
default), so it rewrote an event past 0002's triggers. PostgreSQL has no REPLACE, and its
`ON CONFLICT DO UPDATE` fires the UPDATE trigger that refuses it."""

from django.db import migrations

# Each table's unique columns: a new row naming any of them as an existing row does is refused
# before SQLite's conflict resolution can delete that row.
UNIQUE_COLUMNS = {
    "audit_auditevent": ("id", "event_id"),
    "audit_auditlink": ("seq", "event_pk"),
    "audit_auditcheckpoint": ("number",),
}


def _sqlite_sql() -> list[str]:
    sql = []
    for t, columns in UNIQUE_COLUMNS.items():
        # One EXISTS per column, so each is an index lookup.
        collides = " OR ".join(
            f"EXISTS(SELECT 1 FROM {t} WHERE {c} = NEW.{c})"  # noqa: S608
            for c in columns
        )
        sql.append(
            f"CREATE TRIGGER {t}_no_replace BEFORE INSERT ON {t} WHEN {collides} BEGIN "
            f"SELECT RAISE(ABORT, 'the audit trail is append-only: "
            f"INSERT over an existing row of {t} refused'); END"
        )
    return sql


def triggers_create(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for statement in _sqlite_sql():
        schema_editor.execute(statement, params=None)


def triggers_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for t in UNIQUE_COLUMNS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {t}_no_replace")


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_chain"),
    ]

    operations = [
        migrations.RunPython(triggers_create, triggers_drop),
    ]
