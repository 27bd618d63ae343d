"""The text to publish (title, body, commit message, author) bound to approvals and changesets.

Approvals made before this migration keep `publish_text` NULL: they bind the text when
publishing is requested, as they did then. Changesets still waiting to be pushed get the text
the push would have read from the spec; the push reads only the stored text from now on.
"""

from django.db import migrations, models

from review.publish_text import publish_text_for


def legacy_rows_mark(apps, schema_editor):
    Decision = apps.get_model("review", "Decision")
    Changeset = apps.get_model("review", "Changeset")
    Decision.objects.update(publish_text=None)
    for changeset in Changeset.objects.filter(state="queued").select_related("campaign"):
        text = publish_text_for(changeset.campaign)
        Changeset.objects.filter(pk=changeset.pk).update(
            publish_text=text.as_dict(), publish_hash=text.sha256
        )


class Migration(migrations.Migration):
    dependencies = [
        ("review", "0006_queue_flags_refresh_by_run"),
    ]

    # On SQLite only nullable columns without a default are added in place: a rebuilt
    # review_changeset would lose its queue-flag triggers (0004).
    operations = [
        migrations.AddField(
            model_name="changeset",
            name="publish_hash",
            field=models.CharField(blank=True, max_length=64, null=True),
        ),
        migrations.AddField(
            model_name="changeset",
            name="publish_text",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="decision",
            name="publish_hash",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="decision",
            name="publish_text",
            field=models.JSONField(blank=True, default=dict, null=True),
        ),
        migrations.RunPython(legacy_rows_mark, migrations.RunPython.noop),
    ]
