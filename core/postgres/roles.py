"""Two PostgreSQL roles: an owner that migrates, and an app role that owns nothing.

Only a table's owner (or a superuser) may disable, drop or replace its triggers. The app role
gets plain row privileges, and on the append-only tables INSERT and SELECT alone, so the
application's connection cannot switch the audit triggers off (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connections, transaction
from psycopg import sql

# Django's record of applied migrations: the app reads it (unapplied-migration checks) but must
# not mark a migration applied.
READ_ONLY_TABLES = ("django_migrations",)


class RoleError(Exception):
    """A role set-up that would leave the app role able to alter the tables it writes."""


@dataclass(frozen=True)
class GrantResult:
    app_role: str
    tables: int
    append_only: tuple[str, ...]
    sequences: int


def _refuse_unsafe(cursor, *, app_role: str, append_only: tuple[str, ...]) -> None:
    cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [app_role])
    row = cursor.fetchone()
    if row is None:
        raise RoleError(f"no role named {app_role!r} (CREATE ROLE … LOGIN first)")
    if row[0]:
        raise RoleError(f"{app_role!r} is a superuser: it could drop the audit triggers")
    cursor.execute("SELECT current_user")
    if cursor.fetchone()[0] == app_role:
        raise RoleError(
            f"{app_role!r} is the role this command connects as: grant to a second role that "
            "owns nothing, connecting as the owner (CONVOY_DATABASE_OWNER_URL)"
        )
    # Owning a relation, or being a member of its owner, is what lets a role alter its triggers.
    cursor.execute(
        "SELECT c.oid::regclass::text, c.relowner::regrole::text FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'S') "
        "AND pg_has_role(%s, c.relowner, 'MEMBER') ORDER BY c.relname LIMIT 3",
        [app_role],
    )
    owned = cursor.fetchall()
    if owned:
        names = ", ".join(f"{table} (owner {owner})" for table, owner in owned)
        raise RoleError(f"{app_role!r} owns, or is a member of the owner of, {names}")
    # A role it can SET ROLE to counts as its own: a superuser role's member drops the triggers
    # as that role, and CREATEROLE (before PostgreSQL 16) grants itself the owner's membership.
    cursor.execute(
        "SELECT rolname, rolsuper FROM pg_roles WHERE (rolsuper OR rolcreaterole) "
        "AND pg_has_role(%s, oid, 'MEMBER') ORDER BY rolname LIMIT 1",
        [app_role],
    )
    powerful = cursor.fetchone()
    if powerful is not None:
        name, superuser = powerful
        what = "a superuser" if superuser else "allowed to create roles (CREATEROLE)"
        via = "" if name == app_role else f" through its membership of {name!r}"
        raise RoleError(f"{app_role!r} is {what}{via}: it could drop the audit triggers")
    for table in append_only:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        if not cursor.fetchone()[0]:
            raise RoleError(f"no table {table}: run migrate first")


def _check(cursor, *, app_role: str, append_only: tuple[str, ...]) -> None:
    """The end state, whatever PUBLIC or another role of the app role's was given elsewhere."""
    for table in append_only:
        for privilege, wanted in (
            ("SELECT", True),
            ("INSERT", True),
            ("UPDATE", False),
            ("DELETE", False),
            ("TRUNCATE", False),
            ("TRIGGER", False),
            ("REFERENCES", False),
        ):
            cursor.execute("SELECT has_table_privilege(%s, %s, %s)", [app_role, table, privilege])
            if cursor.fetchone()[0] != wanted:
                raise RoleError(
                    f"{app_role!r} {'lacks' if wanted else 'still has'} {privilege} on {table} "
                    "(through PUBLIC or a role it belongs to: revoke it there)"
                )


def roles_grant(*, app_role: str, append_only: tuple[str, ...], using: str) -> GrantResult:
    """Give `app_role` exactly what the application needs in the current schema: row privileges
    on every table, INSERT and SELECT only on `append_only`, sequences for new ids. Starts from
    nothing each time, so a rerun (after every migrate) also takes back what was granted by hand.
    Runs as the owner, in one transaction: the app never sees a table without its grants."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        raise RoleError("separate roles exist only on PostgreSQL")
    with transaction.atomic(using=using), connection.cursor() as cursor:
        _refuse_unsafe(cursor, app_role=app_role, append_only=append_only)
        cursor.execute("SELECT current_schema()")
        schema = sql.Identifier(cursor.fetchone()[0])
        role = sql.Identifier(app_role)
        statements = [
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(schema, role),
            sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(schema, role),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
                schema, role
            ),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, role),
        ]
        # The sealer only inserts links and checkpoints, and events are stamped by a BEFORE
        # INSERT trigger: no column of an append-only table is ever updated, so no UPDATE at all.
        statements += [
            sql.SQL("REVOKE UPDATE, DELETE ON {} FROM {}").format(sql.Identifier(t), role)
            for t in append_only
        ]
        statements += [
            sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {} FROM {}").format(sql.Identifier(t), role)
            for t in READ_ONLY_TABLES
        ]
        if connection.pg_version >= 170000:
            # ANALYZE for the beat's statistics job (core/postgres/statistics.py), not on the
            # append-only tables: MAINTAIN also allows LOCK TABLE, which could stall the writers.
            statements.append(
                sql.SQL("GRANT MAINTAIN ON ALL TABLES IN SCHEMA {} TO {}").format(schema, role)
            )
            statements += [
                sql.SQL("REVOKE MAINTAIN ON {} FROM {}").format(sql.Identifier(t), role)
                for t in append_only
            ]
        raw = connection.connection
        for statement in statements:
            cursor.execute(statement.as_string(raw))
        _check(cursor, app_role=app_role, append_only=append_only)
        cursor.execute(
            "SELECT count(*) FILTER (WHERE relkind IN ('r', 'p')), "
            "count(*) FILTER (WHERE relkind = 'S') FROM pg_class "
            "WHERE relnamespace = current_schema()::regnamespace"
        )
        tables, sequences = cursor.fetchone()
    return GrantResult(
        app_role=app_role, tables=tables, append_only=append_only, sequences=sequences
    )
