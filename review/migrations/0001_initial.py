"""The review models move from the campaigns app: their tables are adopted as they are (state only),
then renamed in 0002 (rows kept)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("campaigns", "0002_review"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="Decision",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("variant_name", models.CharField(blank=True, max_length=100)),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("pick", "Pick"),
                                    ("approve", "Approve"),
                                    ("reject", "Reject"),
                                ],
                                max_length=8,
                            ),
                        ),
                        ("diff_hash", models.CharField(blank=True, max_length=64)),
                        ("comment", models.TextField(blank=True)),
                        (
                            "group_key",
                            models.CharField(
                                blank=True,
                                help_text="Set when made through bulk review",
                                max_length=64,
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "actor",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "run",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="decisions",
                                to="campaigns.reporun",
                            ),
                        ),
                        (
                            "variant",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="campaigns.variant",
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["-created_at", "-id"],
                    },
                ),
                migrations.CreateModel(
                    name="VariantDigest",
                    fields=[
                        (
                            "variant",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="digest",
                                serialize=False,
                                to="campaigns.variant",
                            ),
                        ),
                        ("diff_sha256", models.CharField(max_length=64)),
                        ("group_key", models.CharField(db_index=True, max_length=64)),
                        (
                            "campaign",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="campaigns.campaign",
                            ),
                        ),
                    ],
                ),
                migrations.CreateModel(
                    name="Changeset",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("diff_hash", models.CharField(max_length=64)),
                        ("branch", models.CharField(max_length=250)),
                        ("remote_url", models.CharField(max_length=1000)),
                        ("commit", models.CharField(blank=True, max_length=64)),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("queued", "Queued"),
                                    ("pushed", "Pushed"),
                                    ("draft", "Draft"),
                                    ("open", "Open"),
                                    ("merged", "Merged"),
                                    ("closed", "Closed"),
                                    ("failed", "Failed"),
                                ],
                                default="queued",
                                max_length=8,
                            ),
                        ),
                        (
                            "checks",
                            models.CharField(
                                choices=[
                                    ("none", "None"),
                                    ("pending", "Pending"),
                                    ("passing", "Passing"),
                                    ("failing", "Failing"),
                                ],
                                default="none",
                                max_length=8,
                            ),
                        ),
                        ("pr_number", models.PositiveIntegerField(blank=True, null=True)),
                        ("pr_url", models.CharField(blank=True, max_length=500)),
                        ("error", models.TextField(blank=True)),
                        ("requested_at", models.DateTimeField(auto_now_add=True)),
                        ("published_at", models.DateTimeField(blank=True, null=True)),
                        ("refreshed_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "campaign",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="changesets",
                                to="campaigns.campaign",
                            ),
                        ),
                        (
                            "published_by",
                            models.ForeignKey(
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "run",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="changeset",
                                to="campaigns.reporun",
                            ),
                        ),
                        (
                            "variant",
                            models.ForeignKey(
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="campaigns.variant",
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["-requested_at", "-id"],
                        "indexes": [
                            models.Index(
                                fields=["state", "refreshed_at"],
                                name="campaigns_c_state_064ab4_idx",
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="RunReview",
                    fields=[
                        (
                            "run",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="review",
                                serialize=False,
                                to="campaigns.reporun",
                            ),
                        ),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("unreviewed", "Unreviewed"),
                                    ("picked", "Picked"),
                                    ("approved", "Approved"),
                                    ("rejected", "Rejected"),
                                ],
                                db_index=True,
                                default="unreviewed",
                                max_length=12,
                            ),
                        ),
                        ("picked_hash", models.CharField(blank=True, max_length=64)),
                        ("approved_hash", models.CharField(blank=True, max_length=64)),
                        ("group_key", models.CharField(blank=True, db_index=True, max_length=64)),
                        ("comment", models.TextField(blank=True)),
                        ("decided_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "campaign",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="campaigns.campaign",
                            ),
                        ),
                        (
                            "decided_by",
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
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="campaigns.variant",
                            ),
                        ),
                    ],
                    options={
                        "indexes": [
                            models.Index(
                                fields=["campaign", "state"], name="campaigns_r_campaig_73c0b2_idx"
                            )
                        ],
                    },
                ),
                migrations.AlterModelTable(name="decision", table="campaigns_decision"),
                migrations.AlterModelTable(name="variantdigest", table="campaigns_variantdigest"),
                migrations.AlterModelTable(name="changeset", table="campaigns_changeset"),
                migrations.AlterModelTable(name="runreview", table="campaigns_runreview"),
            ],
        ),
    ]
