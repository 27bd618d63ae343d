"""The audit trail: append-only events stored as canonical JSON plus indexed columns."""

import uuid

from django.db import models


class AuditEvent(models.Model):
    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    occurred_at = models.DateTimeField(db_index=True)
    action = models.CharField(max_length=100, db_index=True)
    outcome = models.CharField(max_length=10)
    actor_type = models.CharField(max_length=10)
    actor_id = models.CharField(max_length=64, blank=True, db_index=True)
    actor_display = models.CharField(max_length=150, blank=True)
    on_behalf_of = models.CharField(max_length=150, blank=True)
    target_type = models.CharField(max_length=50, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    campaign_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    run_id = models.BigIntegerField(null=True, blank=True)
    variant_id = models.BigIntegerField(null=True, blank=True)
    sandbox_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    body = models.TextField(help_text="Canonical JSON, byte-exact: verification reads this")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_display or self.actor_type} at {self.occurred_at}"
