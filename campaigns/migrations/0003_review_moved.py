"""The review models now belong to the review app (its 0001 adopts their tables, rows kept)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0002_review"),
        ("review", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name="Decision"),
                migrations.DeleteModel(name="VariantDigest"),
                migrations.DeleteModel(name="Changeset"),
                migrations.DeleteModel(name="RunReview"),
            ],
        ),
    ]
