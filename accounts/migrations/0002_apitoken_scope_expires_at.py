"""API tokens get a scope and an expiry. Tokens made before keep what they could do (write) and
expire CONVOY_API_TOKEN_MAX_DAYS after they were made: one older than that expires now."""

from datetime import timedelta

from django.conf import settings
from django.db import migrations, models
from django.db.models import F


def expiry_give(apps, schema_editor):
    ApiToken = apps.get_model("accounts", "ApiToken")
    lifetime = timedelta(days=settings.API_TOKEN_MAX_DAYS)
    ApiToken.objects.filter(expires_at__isnull=True).update(expires_at=F("created_at") + lifetime)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="scope",
            field=models.CharField(
                choices=[
                    ("read", "read: GET and HEAD only"),
                    ("write", "write: everything its owner may do"),
                ],
                default="write",
                max_length=5,
            ),
        ),
        migrations.AlterField(
            model_name="apitoken",
            name="scope",
            field=models.CharField(
                choices=[
                    ("read", "read: GET and HEAD only"),
                    ("write", "write: everything its owner may do"),
                ],
                default="read",
                max_length=5,
            ),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(null=True),
        ),
        migrations.RunPython(expiry_give, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(help_text="Refused from then on (401 saying it expired)"),
        ),
    ]
