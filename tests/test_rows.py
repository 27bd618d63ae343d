"""core.rows: the plain-SQL insert stores a row exactly as the ORM's save would, on both
databases, and tells post_save receivers as the ORM does."""

import pytest
from django.db import connection
from django.db.models.signals import post_save
from django.forms.models import model_to_dict

from core.rows import row_from_db, row_insert
from sandboxes.models import Sandbox

pytestmark = [pytest.mark.django_db, pytest.mark.shapes("embedded", "production")]


def _sandbox(user) -> Sandbox:
    return Sandbox(
        backend="bwrap",
        limits={"cpu": 1, "memory_mb": 512},
        labels={"convoy_run": "7"},
        owner_kind="variant",
        owner_id=3,
        run_id=7,
        on_behalf_of=user,
    )


def test_a_plain_insert_stores_what_the_orms_save_stores(manager):
    seen = []

    def saved(sender, instance, created, **kwargs):
        seen.append((instance.pk, created))

    post_save.connect(saved, sender=Sandbox)
    try:
        plain = row_insert(_sandbox(manager))
    finally:
        post_save.disconnect(saved, sender=Sandbox)
    orm = _sandbox(manager)
    orm.save(force_insert=True)

    assert plain.pk and not plain._state.adding
    assert seen == [(plain.pk, True)]
    stored, expected = Sandbox.objects.get(pk=plain.pk), Sandbox.objects.get(pk=orm.pk)
    assert stored.created_at is not None  # auto_now_add, as the ORM sets it
    ignore = {"id", "created_at"}
    assert {k: v for k, v in model_to_dict(stored).items() if k not in ignore} == {
        k: v for k, v in model_to_dict(expected).items() if k not in ignore
    }


def test_a_row_read_back_is_converted_as_the_orm_converts_it(manager):
    sandbox = row_insert(_sandbox(manager))
    fields = Sandbox._meta.concrete_fields
    columns = ", ".join(f'"{f.column}"' for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM sandboxes_sandbox WHERE id = %s", [sandbox.pk])  # noqa: S608
        row = cursor.fetchone()

    loaded = row_from_db(Sandbox, fields, row, alias="sandboxes_sandbox")
    assert model_to_dict(loaded) == model_to_dict(Sandbox.objects.get(pk=sandbox.pk))
    assert loaded.limits == {"cpu": 1, "memory_mb": 512}  # JSON decoded on both databases
