"""Two PostgreSQL roles: after `db_grant`, the app role can do the app's work (an audited change,
sealing, verifying) but cannot switch the audit triggers off, drop or replace them, or change
audit rows. The test run's own role (a superuser) owns the tables, as the owner role would."""

import contextlib
import io
import os
import secrets
import subprocess
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from accounts.services import user_role_set
from audit.models import AuditCheckpoint, AuditEvent, AuditLink
from campaigns.models import Repository
from core.postgres.statistics import tables_analyze_stale
from tests import support
from tests.audit.trail import assert_trail, trail_seal
from tests.factories import user_make

AUDIT_TABLES = ("audit_auditevent", "audit_auditlink", "audit_auditcheckpoint")
COLUMNS = {"audit_auditevent": "body", "audit_auditlink": "seq", "audit_auditcheckpoint": "body"}
# What someone holding the app's connection would try, each on its own (rolled back).
REFUSED = {
    "disable trigger": "ALTER TABLE {t} DISABLE TRIGGER {t}_no_change",
    "disable all triggers": "ALTER TABLE {t} DISABLE TRIGGER ALL",
    "drop trigger": "DROP TRIGGER {t}_no_change ON {t}",
    "replace trigger function": (
        "CREATE OR REPLACE FUNCTION convoy_audit_refuse() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN NEW; END $$"
    ),
    "drop trigger function": "DROP FUNCTION convoy_audit_refuse() CASCADE",
    "take ownership": "ALTER TABLE {t} OWNER TO CURRENT_USER",
    "update": "UPDATE {t} SET {col} = {col}",
    "delete": "DELETE FROM {t}",
    "truncate": "TRUNCATE {t} CASCADE",
    "replica mode": "SET session_replication_role = replica",
}


@pytest.fixture
def app_role(transactional_db, settings):
    """A login role of this run's own (roles are the server's, shared by every database),
    granted by `db_grant`, then dropped with whatever was granted to it."""
    settings.AUDIT_CHECKPOINT_EVERY = 1
    name = f"convoy_test_app_{os.getpid()}_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    with connection.cursor() as cursor:
        # Utility statements take no bound parameters; the password is URL-safe characters.
        cursor.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        call_command("db_grant", app_role=name, database="default", stdout=io.StringIO())
        yield name, password
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {name}")
            cursor.execute(f"DROP ROLE {name}")


def _url_as(name: str, password: str) -> str:
    parts = urlsplit(support.test_database_url())
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{name}:{password}@{host}"))


@contextlib.contextmanager
def _django_as(name: str, password: str):
    """Django's own connection (services, sealer, verify) reopened as the app role."""
    settings_dict = connection.settings_dict
    saved = settings_dict["USER"], settings_dict["PASSWORD"]
    connection.close()
    settings_dict["USER"], settings_dict["PASSWORD"] = name, password
    try:
        yield
    finally:
        connection.close()
        settings_dict["USER"], settings_dict["PASSWORD"] = saved


def _seed_trail() -> None:
    user_role_set(user=user_make(role=None, username="gina"), role="reviewer")
    trail_seal()


@pytest.mark.parametrize("table", AUDIT_TABLES)
def test_the_app_role_cannot_switch_off_or_go_past_the_audit_triggers(app_role, table):
    _seed_trail()
    before = {t: _count(t) for t in AUDIT_TABLES}
    let_through = []
    with psycopg.connect(_url_as(*app_role)) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == app_role[0]
        for attempt, statement in REFUSED.items():
            try:
                conn.execute(statement.format(t=table, col=COLUMNS[table]))
            except psycopg.errors.InsufficientPrivilege as exc:
                # Refused by privileges before any trigger runs: "append-only" would mean the
                # role got as far as the rows, stopped only by a trigger it could have dropped.
                if "append-only" in str(exc):
                    let_through.append(f"{attempt}: only the trigger refused it")
            else:
                let_through.append(f"{attempt}: done")
            conn.rollback()
    assert let_through == []
    assert {t: _count(t) for t in AUDIT_TABLES} == before
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass "
            "AND NOT tgisinternal ORDER BY 1",
            [table],
        )
        triggers = dict(cursor.fetchall())
    assert triggers[f"{table}_no_change"] == triggers[f"{table}_no_truncate"] == "A"


def _count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
        return cursor.fetchone()[0]


def test_the_app_role_does_the_apps_work_audited_sealed_and_verified(app_role, capsys):
    admin = user_make(role="admin", username="ada")
    gina = user_make(role=None, username="gina")
    first = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    # Enough changed rows that the statistics job finds the table due (autovacuum is off here).
    Repository.objects.bulk_create(
        Repository(url=f"file:///srv/git/roles-{i}.git", name=f"roles-{i}") for i in range(80)
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
    with _django_as(*app_role):
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone()[0] == app_role[0]
        user_role_set(user=gina, role="reviewer", actor=admin)
        trail_seal()
        assert_trail(["people.role.granted"], after_id=first)
        call_command("audit_verify", jobs=1)
        trail_seal()  # the verification's own event
        # The beat's statistics job skips what this role may not ANALYZE instead of warning.
        assert tables_analyze_stale() == []
    assert "OK:" in capsys.readouterr().out
    sealed = AuditEvent.objects.count()
    assert AuditLink.objects.count() == sealed
    assert AuditCheckpoint.objects.order_by("-number").first().size == sealed


def test_db_grant_is_idempotent_and_takes_back_what_was_granted_by_hand(app_role):
    name, _ = app_role
    with connection.cursor() as cursor:
        cursor.execute(f"GRANT UPDATE, TRUNCATE, TRIGGER ON audit_auditevent TO {name}")
    call_command("db_grant", app_role=name, database="default", stdout=io.StringIO())
    call_command("db_grant", app_role=name, database="default", stdout=io.StringIO())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = %s AND table_name = 'audit_auditevent' ORDER BY 1",
            [name],
        )
        assert [row[0] for row in cursor.fetchall()] == ["INSERT", "SELECT"]
        cursor.execute(
            "SELECT privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = %s AND table_name = 'campaigns_campaign' ORDER BY 1",
            [name],
        )
        assert [row[0] for row in cursor.fetchall()] == ["DELETE", "INSERT", "SELECT", "UPDATE"]


def test_db_grant_refuses_a_role_that_could_alter_the_tables(app_role):
    name, _ = app_role
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        owner = cursor.fetchone()[0]
    with pytest.raises(CommandError, match=r"--app-role: .* is a superuser"):
        call_command("db_grant", app_role=owner, database="default")
    with pytest.raises(CommandError, match="--app-role: no role named"):
        call_command("db_grant", app_role=f"{name}_missing", database="default")
    # A member of the owner role may act as the owner: ALTER TABLE … DISABLE TRIGGER included.
    with connection.cursor() as cursor:
        cursor.execute(f"GRANT {owner} TO {name}")
    try:
        with pytest.raises(CommandError, match=r"--app-role: .* member of the owner"):
            call_command("db_grant", app_role=name, database="default")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"REVOKE {owner} FROM {name}")
    # A role it may become counts as its own: a superuser role, or one that can create roles
    # (and so grant itself the owner's), through membership or on the role itself.
    powerful = f"{name}_powerful"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {powerful} NOLOGIN SUPERUSER")
        cursor.execute(f"GRANT {powerful} TO {name}")
    try:
        with pytest.raises(
            CommandError, match=rf"superuser through its membership of '{powerful}'"
        ):
            call_command("db_grant", app_role=name, database="default")
        with connection.cursor() as cursor:
            cursor.execute(f"REVOKE {powerful} FROM {name}")
            cursor.execute(f"ALTER ROLE {name} CREATEROLE")
        with pytest.raises(CommandError, match=r"allowed to create roles \(CREATEROLE\)"):
            call_command("db_grant", app_role=name, database="default")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER ROLE {name} NOCREATEROLE")
            cursor.execute(f"DROP ROLE {powerful}")
    call_command("db_grant", app_role=name, database="default")


def test_migrate_with_both_urls_runs_as_the_owner_then_grants_the_app_role(app_role):
    name, password = app_role
    with connection.cursor() as cursor:
        cursor.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {name}")
    result = subprocess.run(
        [support.PYTHON, "manage.py", "migrate", "--noinput"],
        cwd=support.ROOT,
        env=support.subprocess_env(
            DATABASE_URL=_url_as(name, password),
            CONVOY_DATABASE_OWNER_URL=support.test_database_url(),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"granted {name}: " in result.stdout
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT has_table_privilege(%s, 'audit_auditevent', 'INSERT'), "
            "has_table_privilege(%s, 'audit_auditevent', 'UPDATE'), "
            "has_table_privilege(%s, 'campaigns_campaign', 'UPDATE')",
            [name, name, name],
        )
        assert cursor.fetchone() == (True, False, True)


@pytest.mark.shapes("embedded")
def test_db_grant_says_roles_are_a_postgresql_set_up(db):
    with pytest.raises(CommandError, match="--app-role: separate roles exist only on PostgreSQL"):
        call_command("db_grant", app_role="convoy_app", database="default")
