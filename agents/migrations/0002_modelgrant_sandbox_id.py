from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelgrant",
            name="sandbox_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
