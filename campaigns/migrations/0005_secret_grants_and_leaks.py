"""Secret grants (per campaign or per manager) and secret leaks found in variants' diffs."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0004_previewing_revisions"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="SecretGrant",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("granted_at", models.DateTimeField(auto_now_add=True)),
                (
                    "campaign",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="secret_grants",
                        to="campaigns.campaign",
                    ),
                ),
                (
                    "granted_by",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "manager",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="secret_grants",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "secret",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="grants",
                        to="campaigns.secret",
                    ),
                ),
            ],
            options={
                "ordering": ["secret__name", "id"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(campaign__isnull=True) ^ models.Q(manager__isnull=True),
                        name="secret_grant_one_grantee",
                    ),
                    models.UniqueConstraint(
                        fields=("secret", "campaign"), name="secret_grant_campaign"
                    ),
                    models.UniqueConstraint(
                        fields=("secret", "manager"), name="secret_grant_manager"
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="SecretLeak",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("names", models.JSONField(default=list, help_text="Names of the secrets found")),
                (
                    "forms",
                    models.JSONField(
                        default=list, help_text="How they were written (plain, base64, …)"
                    ),
                ),
                ("found_at", models.DateTimeField(auto_now_add=True)),
                ("overridden_at", models.DateTimeField(blank=True, null=True)),
                ("override_reason", models.TextField(blank=True)),
                (
                    "overridden_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "variant",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="secret_leak",
                        to="campaigns.variant",
                    ),
                ),
            ],
        ),
    ]
