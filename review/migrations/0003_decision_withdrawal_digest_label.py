"""Undo of decisions (withdrawn, never deleted); digests keyed by the change itself, labelled.

Existing digests are recomputed: their group key used to include context lines.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from review.diffs import CHANGE_LINES_KEPT, diff_changes, diff_group_key
from review.groups import change_files, change_summary


def digests_recompute(apps, schema_editor):
    VariantDigest = apps.get_model("review", "VariantDigest")
    Variant = apps.get_model("campaigns", "Variant")
    ids = list(VariantDigest.objects.values_list("variant_id", flat=True))
    for start in range(0, len(ids), 200):
        for v in Variant.objects.filter(pk__in=ids[start : start + 200]).only("pk", "patch"):
            changes = diff_changes(bytes(v.patch))
            lines = sum(len(c[2]) for c in changes)
            VariantDigest.objects.filter(variant_id=v.pk).update(
                group_key=diff_group_key(bytes(v.patch)),
                files=change_files(changes)[:50],
                summary=change_summary(changes)[:300],
                changes=changes if lines <= CHANGE_LINES_KEPT else [],
            )


class Migration(migrations.Migration):
    dependencies = [
        ("review", "0002_tables_renamed"),
        ("campaigns", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="decision",
            name="withdrawn_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="decision",
            name="withdrawn_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="variantdigest",
            name="changes",
            field=models.JSONField(default=list),
        ),
        migrations.AddField(
            model_name="variantdigest",
            name="files",
            field=models.JSONField(default=list),
        ),
        migrations.AddField(
            model_name="variantdigest",
            name="summary",
            field=models.CharField(blank=True, max_length=300),
        ),
        migrations.RunPython(digests_recompute, migrations.RunPython.noop),
    ]
