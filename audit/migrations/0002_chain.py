"""The chain, the checkpoints, and the triggers that make all three audit tables append-only."""

import django.db.models.deletion
from django.db import migrations, models


TABLES = ("audit_auditevent", "audit_auditlink", "audit_auditcheckpoint")

# TRUNCATE is let through only inside `audit.maintenance.audit_maintenance()` (a superuser
# setting a session flag: the test suite's flush); a superuser can drop triggers anyway.
PG_FUNCTIONS = """
CREATE OR REPLACE FUNCTION convoy_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' AND current_setting('convoy.audit_maintenance', true) = 'on'
     AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    RETURN NULL;
  END IF;
  RAISE EXCEPTION 'the audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE OR REPLACE FUNCTION convoy_audit_stamp_txid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.txid := pg_current_xact_id()::text::bigint;
  RETURN NEW;
END $$;
"""


def _pg_sql() -> list[str]:
    sql = [PG_FUNCTIONS]
    for t in TABLES:
        sql += [
            f"CREATE TRIGGER {t}_no_change BEFORE UPDATE OR DELETE ON {t} "
            "FOR EACH ROW EXECUTE FUNCTION convoy_audit_refuse()",
            f"CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
            "FOR EACH STATEMENT EXECUTE FUNCTION convoy_audit_refuse()",
            # ALWAYS: session_replication_role=replica must not switch them off.
            f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {t}_no_change",
            f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {t}_no_truncate",
        ]
    sql += [
        "CREATE TRIGGER audit_auditevent_txid BEFORE INSERT ON audit_auditevent "
        "FOR EACH ROW EXECUTE FUNCTION convoy_audit_stamp_txid()",
        "ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_auditevent_txid",
    ]
    return sql


def _sqlite_sql() -> list[str]:
    sql = []
    for t in TABLES:
        sql += [
            f"CREATE TRIGGER {t}_no_update BEFORE UPDATE ON {t} BEGIN "
            f"SELECT RAISE(ABORT, 'the audit trail is append-only: UPDATE on {t} refused'); END",
            # convoy_audit_maintenance() is registered on every connection by audit.apps.
            f"CREATE TRIGGER {t}_no_delete BEFORE DELETE ON {t} "
            "WHEN NOT convoy_audit_maintenance() BEGIN "
            f"SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE on {t} refused'); END",
        ]
    return sql


def triggers_create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        statements = _pg_sql()
    elif vendor == "sqlite":
        statements = _sqlite_sql()
    else:
        raise RuntimeError(f"no append-only triggers for database vendor {vendor!r}")
    for statement in statements:
        schema_editor.execute(statement, params=None)


def triggers_drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for t in TABLES:
        names = (
            ("no_change", "no_truncate") if vendor == "postgresql" else ("no_update", "no_delete")
        )
        for name in names:
            on = f" ON {t}" if vendor == "postgresql" else ""
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {t}_{name}{on}")
    if vendor == "postgresql":
        schema_editor.execute("DROP TRIGGER IF EXISTS audit_auditevent_txid ON audit_auditevent")


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditCheckpoint",
            fields=[
                ("number", models.BigIntegerField(primary_key=True, serialize=False)),
                ("size", models.BigIntegerField()),
                (
                    "body",
                    models.TextField(
                        help_text="Canonical JSON of the signed statement, byte-exact"
                    ),
                ),
                ("signature", models.CharField(max_length=128)),
                ("frontier", models.JSONField(default=list)),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "ordering": ["number"],
            },
        ),
        migrations.CreateModel(
            name="AuditLink",
            fields=[
                ("seq", models.BigIntegerField(primary_key=True, serialize=False)),
                ("event_uuid", models.UUIDField()),
                ("content_hash", models.BinaryField(max_length=32)),
                ("chain_hash", models.BinaryField(max_length=32)),
            ],
            options={
                "ordering": ["seq"],
            },
        ),
        migrations.AddField(
            model_name="auditevent",
            name="txid",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["txid", "id"], name="audit_event_txid_id"),
        ),
        migrations.AddField(
            model_name="auditlink",
            name="event",
            field=models.OneToOneField(
                db_column="event_pk",
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="link",
                to="audit.auditevent",
            ),
        ),
        migrations.RunPython(triggers_create, triggers_drop),
    ]
