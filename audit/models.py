"""The audit trail: append-only events (canonical JSON plus indexed columns), the sealer's hash
chain over them, and the signed checkpoints that pin the chain."""

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
    # PostgreSQL: the inserting transaction's id, set by a trigger whatever the INSERT says.
    # The sealer orders by (txid, id) and links only rows of certainly finished transactions.
    txid = models.BigIntegerField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["txid", "id"], name="audit_event_txid_id")]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_display or self.actor_type} at {self.occurred_at}"


class AuditLink(models.Model):
    """One event's place in the chain: written once by the sealer, never changed."""

    seq = models.BigIntegerField(primary_key=True)
    event = models.OneToOneField(
        AuditEvent, on_delete=models.DO_NOTHING, related_name="link", db_column="event_pk"
    )
    # Kept beside the foreign key so a deleted event can still be named by its event_id.
    event_uuid = models.UUIDField()
    content_hash = models.BinaryField(max_length=32)
    chain_hash = models.BinaryField(max_length=32)

    class Meta:
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {bytes(self.chain_hash).hex()[:12]}"


class AuditCheckpoint(models.Model):
    """A signed statement of the chain's size, head and Merkle root at one moment."""

    number = models.BigIntegerField(primary_key=True)
    size = models.BigIntegerField()
    body = models.TextField(help_text="Canonical JSON of the signed statement, byte-exact")
    signature = models.CharField(max_length=128)
    # The Merkle tree's perfect-subtree roots at `size`, so the next checkpoint continues from
    # here. Unsigned: the verifier checks that they fold to the signed root.
    frontier = models.JSONField(default=list)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"checkpoint {self.number} at size {self.size}"
