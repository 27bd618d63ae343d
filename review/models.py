"""Review records: the decision state of each run, every decision, and published changesets.

`RunReview` holds the current state of one run's review (one row per run, so queues and
dashboards count with one indexed query); `Decision` is the history. An approval is valid only
while the picked variant's diff still has the hash it was approved on: a rerun that changes the
diff makes the run need approval again without anyone having to reset anything.
"""

from django.conf import settings
from django.db import models


class ReviewState(models.TextChoices):
    UNREVIEWED = "unreviewed"
    PICKED = "picked"
    APPROVED = "approved"
    REJECTED = "rejected"


class RunReview(models.Model):
    run = models.OneToOneField(
        "campaigns.RepoRun", on_delete=models.CASCADE, primary_key=True, related_name="review"
    )
    campaign = models.ForeignKey("campaigns.Campaign", on_delete=models.CASCADE, related_name="+")
    state = models.CharField(
        max_length=12, choices=ReviewState, default=ReviewState.UNREVIEWED, db_index=True
    )
    variant = models.ForeignKey(
        "campaigns.Variant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    picked_hash = models.CharField(max_length=64, blank=True)
    approved_hash = models.CharField(max_length=64, blank=True)
    group_key = models.CharField(max_length=64, blank=True, db_index=True)
    comment = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["campaign", "state"])]

    def __str__(self) -> str:
        return f"review of run {self.run_id}: {self.state}"


class DecisionKind(models.TextChoices):
    PICK = "pick"
    APPROVE = "approve"
    REJECT = "reject"


class Decision(models.Model):
    """One reviewer decision, with the exact diff hash it was made on."""

    run = models.ForeignKey("campaigns.RepoRun", on_delete=models.CASCADE, related_name="decisions")
    variant = models.ForeignKey(
        "campaigns.Variant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    variant_name = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=8, choices=DecisionKind)
    diff_hash = models.CharField(max_length=64, blank=True)
    comment = models.TextField(blank=True)
    group_key = models.CharField(
        max_length=64, blank=True, help_text="Set when made through bulk review"
    )
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # An undo keeps the row: it is marked withdrawn (with its own audit event) and the run's
    # review goes back to what the decisions before it say.
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # An approval's text to publish as its reviewer was shown it (review.publish_text: title,
    # body, commit_message, author) and its hash: publishing refuses once the spec says
    # otherwise. NULL only on approvals from before migration 0007, which bind the text when
    # publishing is requested (as every approval did then).
    publish_text = models.JSONField(null=True, blank=True, default=dict)
    publish_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} run {self.run_id} by {self.actor_id}"


class VariantDigest(models.Model):
    """A variant's change for bulk review, computed once per diff hash when the diff is stored.

    `group_key` hashes the added and removed lines per file (context and line numbers left
    out); `files` and `summary` label the group; `changes` (review.diffs.diff_changes, empty
    past CHANGE_LINES_KEPT lines) lets the page find near-identical groups without a diff.
    """

    variant = models.OneToOneField(
        "campaigns.Variant", on_delete=models.CASCADE, primary_key=True, related_name="digest"
    )
    campaign = models.ForeignKey("campaigns.Campaign", on_delete=models.CASCADE, related_name="+")
    diff_sha256 = models.CharField(max_length=64)
    group_key = models.CharField(max_length=64)
    files = models.JSONField(default=list)
    summary = models.CharField(max_length=300, blank=True)
    changes = models.JSONField(default=list)

    class Meta:
        indexes = [
            # A group's members in order (review.require.group_member_ids): a slice at a time.
            models.Index(fields=["campaign", "group_key", "variant"], name="digest_group_members"),
        ]

    def __str__(self) -> str:
        return f"{self.variant_id}: {self.group_key[:12]}"


class ChangesetState(models.TextChoices):
    QUEUED = "queued"  # publish requested, push not done yet
    PUSHED = "pushed"  # branch pushed; no code host to open a pull request on
    DRAFT = "draft"
    OPEN = "open"
    MERGED = "merged"
    CLOSED = "closed"
    FAILED = "failed"


class ChecksState(models.TextChoices):
    NONE = "none"
    PENDING = "pending"
    PASSING = "passing"
    FAILING = "failing"


class Changeset(models.Model):
    """The published form of an approved change: a branch, and a pull request when possible."""

    run = models.OneToOneField(
        "campaigns.RepoRun", on_delete=models.CASCADE, related_name="changeset"
    )
    campaign = models.ForeignKey(
        "campaigns.Campaign", on_delete=models.CASCADE, related_name="changesets"
    )
    variant = models.ForeignKey(
        "campaigns.Variant", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    diff_hash = models.CharField(max_length=64)
    branch = models.CharField(max_length=250)
    remote_url = models.CharField(max_length=1000)
    commit = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=8, choices=ChangesetState, default=ChangesetState.QUEUED)
    checks = models.CharField(max_length=8, choices=ChecksState, default=ChecksState.NONE)
    pr_number = models.PositiveIntegerField(null=True, blank=True)
    pr_url = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    # The text the push and the pull request use (review.publish_text), copied from the
    # approval when publishing was requested; never read from the spec at push time. NULL on
    # rows from before migration 0007 that were no longer waiting to be pushed.
    publish_text = models.JSONField(null=True, blank=True)
    publish_hash = models.CharField(max_length=64, null=True, blank=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["state", "refreshed_at"])]

    def __str__(self) -> str:
        return f"{self.branch} ({self.state})"


class QueueFlags(models.Model):
    """Which review buckets one run is counted in (bits: 1 todo, 2 approved, 4 rejected,
    8 published), kept by database triggers (migration 0004) so that a change to a run, its
    variants, its review or its changeset adds the difference to campaigns.CountDelta.

    Plain ids rather than foreign keys: triggers may touch this table while Django deletes a
    campaign's rows in an order of its choosing.
    """

    run_id = models.BigIntegerField(primary_key=True)
    campaign_id = models.BigIntegerField(db_index=True)
    flags = models.SmallIntegerField(default=0)

    def __str__(self) -> str:
        return f"queue flags of run {self.run_id}: {self.flags}"
