"""Sandbox records: each sandbox, its snapshots, every command it ran and every log line."""

from django.conf import settings
from django.db import models


class SandboxState(models.TextChoices):
    CREATING = "creating"
    RUNNING = "running"
    TERMINATED = "terminated"
    FAILED = "failed"


class Sandbox(models.Model):
    backend = models.CharField(max_length=20)
    external_id = models.CharField(max_length=200, blank=True, db_index=True)
    state = models.CharField(max_length=12, choices=SandboxState, default=SandboxState.CREATING)
    unsafe = models.BooleanField(default=False, help_text="Ran on the unsandboxed process backend")
    image = models.CharField(max_length=300, blank=True)
    network = models.CharField(max_length=12, default="none")
    limits = models.JSONField(default=dict, help_text="cpu, memory_mb, pids, timeouts, disk")
    labels = models.JSONField(default=dict)
    # What owns this sandbox; the reaper terminates sandboxes whose owner is gone.
    owner_kind = models.CharField(max_length=20, blank=True)  # "variant", "run", "cli", …
    owner_id = models.BigIntegerField(null=True, blank=True)
    campaign_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    run_id = models.BigIntegerField(null=True, blank=True)
    variant_id = models.BigIntegerField(null=True, blank=True)
    on_behalf_of = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    from_snapshot = models.ForeignKey(
        "SandboxSnapshot", null=True, blank=True, on_delete=models.SET_NULL, related_name="forks"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    terminated_at = models.DateTimeField(null=True, blank=True)
    terminated_reason = models.CharField(max_length=200, blank=True)
    terminated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_log_seq = models.BigIntegerField(default=0, help_text="Highest stored LogLine.seq")

    class Meta:
        indexes = [models.Index(fields=["state", "deadline_at"])]

    def __str__(self) -> str:
        return f"sandbox {self.pk} ({self.backend})"


class SandboxSnapshot(models.Model):
    """A frozen filesystem layer that forks are made from; deleted with its owner."""

    source = models.ForeignKey(Sandbox, on_delete=models.CASCADE, related_name="snapshots")
    backend = models.CharField(max_length=20)
    external_id = models.CharField(max_length=300)
    owner_kind = models.CharField(max_length=20, blank=True)
    owner_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"snapshot {self.pk} of sandbox {self.source_id}"


class SandboxCommand(models.Model):
    sandbox = models.ForeignKey(Sandbox, on_delete=models.CASCADE, related_name="commands")
    argv = models.JSONField()
    cwd = models.CharField(max_length=500, blank=True)
    env_names = models.JSONField(default=list, help_text="Names only; values may be secrets")
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    timed_out = models.BooleanField(default=False)
    truncated = models.BooleanField(default=False)
    bytes_out = models.BigIntegerField(default=0)
    duration_ms = models.IntegerField(null=True, blank=True)
    output_sha256 = models.CharField(max_length=64, blank=True)
    # Which sandbox limit stopped the command ("process limit reached (pids_max=256)"), if any.
    limit_hit = models.CharField(max_length=120, blank=True, db_default="")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return " ".join(self.argv)[:100]


class LogLine(models.Model):
    """One line of a sandbox's output; `seq` is contiguous per sandbox from 1."""

    # No index of its own: the unique (sandbox, seq) index serves every lookup by sandbox, and
    # one index fewer makes the bulk inserts of a noisy command about a third cheaper.
    sandbox = models.ForeignKey(
        Sandbox, on_delete=models.CASCADE, related_name="log_lines", db_index=False
    )
    seq = models.BigIntegerField()
    command = models.ForeignKey(
        SandboxCommand, null=True, blank=True, on_delete=models.CASCADE, related_name="log_lines"
    )
    stream = models.CharField(max_length=6)  # stdout, stderr, system
    text = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["sandbox", "seq"], name="logline_sandbox_seq_unique")
        ]
        ordering = ["sandbox", "seq"]

    def __str__(self) -> str:
        return f"{self.sandbox_id}:{self.seq}"


# --- campaign images (sandboxes/images/) -------------------------------------------------------
class ImageState(models.TextChoices):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


class Image(models.Model):
    """One root filesystem built from an `image:` spec, keyed by the hash of the normalised spec.

    The files live under `<data dir>/images/<key>/`; the row says whether they are complete and
    who is building them (`builder` = host:pid:token, claimed with a conditional UPDATE, so two
    processes never build the same key at once).
    """

    key = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=10)  # "debian" or "oci"
    spec = models.JSONField(help_text="The normalised image spec")
    state = models.CharField(max_length=10, choices=ImageState, default=ImageState.BUILDING)
    size_bytes = models.BigIntegerField(default=0)
    build_log_path = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    error_field = models.CharField(max_length=100, blank=True)
    builder = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    builds = models.IntegerField(default=0, help_text="Builds started for this key")
    build_seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    built_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"image {self.key[:12]} ({self.state})"
