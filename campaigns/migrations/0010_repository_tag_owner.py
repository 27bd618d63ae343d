"""Repository tags get an owner: for each tag already in use, whoever first registered a
repository under it (from the trail's `campaign.repository.registered` events); no owner (admins
only) when the trail does not say, as for the demo seed."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def tags_claim(apps, schema_editor):
    import json

    Repository = apps.get_model("campaigns", "Repository")
    RepositoryTag = apps.get_model("campaigns", "RepositoryTag")
    AuditEvent = apps.get_model("audit", "AuditEvent")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    names = set()
    for tags in Repository.objects.values_list("tags", flat=True).iterator():
        names.update(t for t in tags or [] if isinstance(t, str) and 0 < len(t) <= 100)
    owners: dict[str, str] = {}
    events = AuditEvent.objects.filter(
        action="campaign.repository.registered", actor_type__in=["human", "api_token"]
    )
    for actor_id, body in events.order_by("id").values_list("actor_id", "body").iterator():
        for tag in json.loads(body).get("payload", {}).get("tags", []):
            owners.setdefault(tag, actor_id)
    users = {str(pk) for pk in User.objects.values_list("pk", flat=True)}
    RepositoryTag.objects.bulk_create(
        [
            RepositoryTag(name=n, owner_id=owners[n] if owners.get(n) in users else None)
            for n in sorted(names)
        ]
    )


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0009_run_pending_handoff_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("audit", "0002_chain"),
    ]

    operations = [
        migrations.CreateModel(
            name="RepositoryTag",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=100, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "owner",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.RunPython(tags_claim, migrations.RunPython.noop),
    ]
