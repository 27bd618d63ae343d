"""Rows written and read with plain SQL, for the few statements on every run's path.

An ORM insert or update costs about four times the client CPU of its SQL (the query compiler
runs each time; docs/benchmarks.md, issue 20). These helpers keep what the ORM would do with
the values (each field's `pre_save` and database preparation on the way in, its converters on
the way out) and cache what does not change between calls: column lists, statements, the
converters. Callers own their statements' conditions; these only build and convert.

They use the thread's connection itself (`connections[DEFAULT_DB_ALIAS]`), looked up once a
call: `django.db.connection` is a proxy that finds it again on every attribute read (about
4 µs each, in asgiref's context-local storage), and a field's preparation reads it once or
twice per value (an integer field: 7.5 µs through the proxy, 2.2 µs without; well under 1 ms
a run in all, docs/benchmarks.md session 16).
"""

from __future__ import annotations

from functools import lru_cache

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models.signals import post_save


@lru_cache(maxsize=64)
def _insert(model, vendor: str) -> tuple[str, tuple]:
    meta, quote = model._meta, connection.ops.quote_name
    fields = tuple(f for f in meta.concrete_fields if f is not meta.auto_field)
    columns = ", ".join(quote(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING {pk}", fields  # noqa: S608


def row_insert(instance):
    """Store a new instance as `save(force_insert=True)` would, in one statement: each field's
    `pre_save` (auto_now_add) and preparation, the id read back, `post_save` sent (created).

    For models with an auto primary key, no parents and no `save` or `pre_save` of their own;
    the caller handles an IntegrityError as it would the ORM's."""
    model = type(instance)
    db = connections[DEFAULT_DB_ALIAS]
    if not db.features.can_return_columns_from_insert:
        instance.save(force_insert=True)
        return instance
    sql, fields = _insert(model, db.vendor)
    params = [f.get_db_prep_save(f.pre_save(instance, add=True), db) for f in fields]
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        instance.pk = cursor.fetchone()[0]
    row_stored(instance)
    post_save.send(
        sender=model,
        instance=instance,
        created=True,
        update_fields=None,
        raw=False,
        using=DEFAULT_DB_ALIAS,
    )
    return instance


def row_stored(instance):
    """Mark an instance whose row a plain statement just wrote as stored (not `adding`)."""
    instance._state.adding, instance._state.db = False, DEFAULT_DB_ALIAS
    return instance


@lru_cache(maxsize=256)
def _fields(model, names: tuple[str, ...], vendor: str) -> tuple[tuple, tuple[str, ...]]:
    fields = tuple(model._meta.get_field(name) for name in names)
    return fields, tuple(connection.ops.quote_name(f.column) for f in fields)


def columns_prepared(model, values: dict) -> tuple[tuple[str, ...], list]:
    """The quoted column names of `values`' fields and the values prepared by those fields for
    this database, in the same order."""
    db = connections[DEFAULT_DB_ALIAS]
    fields, columns = _fields(model, tuple(values), db.vendor)
    params = [f.get_db_prep_save(v, db) for f, v in zip(fields, values.values(), strict=True)]
    return columns, params


def assignments_prepared(model, values: dict) -> tuple[str, list]:
    """`col = %s, ...` for an UPDATE of `values`' fields, and the values prepared for it."""
    columns, params = columns_prepared(model, values)
    return ", ".join(f"{column} = %s" for column in columns), params


@lru_cache(maxsize=64)
def _converters(model, fields: tuple, alias: str, vendor: str) -> tuple:
    out = []
    for field in fields:
        column = field.get_col(alias)
        found = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        out.append((column, tuple(found)))
    return tuple(out)


def row_from_db(model, fields, values, *, alias: str):
    """A model instance from raw column values of `fields` (read through `alias`), converted as
    the ORM converts its own."""
    db = connections[DEFAULT_DB_ALIAS]
    fields = tuple(fields)
    converted = []
    for (column, found), value in zip(
        _converters(model, fields, alias, db.vendor), values, strict=True
    ):
        for converter in found:
            value = converter(value, column, db)
        converted.append(value)
    return model.from_db(DEFAULT_DB_ALIAS, [f.attname for f in fields], converted)
