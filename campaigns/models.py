"""Campaign records: repositories, campaigns, one run per repository, one variant per fork."""

from django.conf import settings
from django.db import models


class Repository(models.Model):
    url = models.CharField(max_length=1000, unique=True)
    name = models.CharField(max_length=200, help_text="Shown in lists; derived from the URL")
    default_ref = models.CharField(max_length=200, default="HEAD")
    tags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return self.name


class RepositoryTag(models.Model):
    """A tag repositories are registered under, and who may add repositories to it.

    A campaign's `repos: {tag: NAME}` runs the code of every repository under the tag, with
    the campaign's secrets: the first person to register under a name owns it, and only the
    owner or an admin adds to it later. No owner (the demo seed, a removed user): admins only."""

    name = models.CharField(max_length=100, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CampaignState(models.TextChoices):
    DRAFT = "draft"
    PREVIEWING = "previewing"  # a sample of its repositories runs; not launched yet
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Campaign(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    spec = models.JSONField(help_text="The validated, normalised spec")
    spec_source = models.TextField(blank=True, help_text="The YAML or JSON as submitted")
    state = models.CharField(max_length=12, choices=CampaignState, default=CampaignState.DRAFT)
    backend = models.CharField(max_length=20)
    max_parallel = models.PositiveIntegerField(default=8)
    four_eyes = models.BooleanField(
        default=True, help_text="The person who launched it may not approve its changes"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="campaigns"
    )
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    launched_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return self.name

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.spec.get("variants", [])]


class RunState(models.TextChoices):
    PENDING = "pending"  # created, waiting for a slot
    QUEUED = "queued"  # holds a slot, its task is on the broker
    RUNNING = "running"  # a worker holds its lease
    SUCCEEDED = "succeeded"  # every variant reached a final state
    FAILED = "failed"  # the repository could not be prepared (fetch, checkout, setup)
    CANCELLED = "cancelled"


class Validation(models.TextChoices):
    NONE = "", "not run"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped", "no validate steps"


class Outcome(models.TextChoices):
    """A variant's validation read against its run's baseline (campaigns.baseline)."""

    NONE = "", "not validated"
    PASSES = "passes"
    FIXES = "fixes"  # the baseline failed, the variant passes
    STILL_FAILING = "still_failing", "still failing"  # failed before and after
    REGRESSES = "regresses"  # the baseline passed, the variant fails
    FAILS = "fails"  # the variant fails; no baseline to compare with

    @classmethod
    def of(cls, *, baseline: str, validation: str) -> "Outcome":
        if validation == Validation.PASSED:
            return cls.FIXES if baseline == Validation.FAILED else cls.PASSES
        if validation == Validation.FAILED:
            if baseline == Validation.FAILED:
                return cls.STILL_FAILING
            return cls.REGRESSES if baseline == Validation.PASSED else cls.FAILS
        return cls.NONE


RUN_FINAL_STATES = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)
RUN_ACTIVE_STATES = (RunState.QUEUED, RunState.RUNNING)

# Legal moves; `run_transition` refuses anything else.
RUN_TRANSITIONS = {
    RunState.PENDING: {RunState.QUEUED, RunState.CANCELLED},
    RunState.QUEUED: {RunState.RUNNING, RunState.PENDING, RunState.CANCELLED, RunState.FAILED},
    RunState.RUNNING: {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.CANCELLED,
        RunState.QUEUED,  # transient error or lost worker: back on the broker
    },
    RunState.SUCCEEDED: {RunState.PENDING},  # re-run after a revision changed its steps
    RunState.FAILED: {RunState.PENDING},  # retry
    RunState.CANCELLED: {RunState.PENDING},  # retry after cancel
}


class RepoRun(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="runs")
    repository = models.ForeignKey(Repository, on_delete=models.PROTECT, related_name="runs")
    ref = models.CharField(max_length=200)
    state = models.CharField(max_length=12, choices=RunState, default=RunState.PENDING)
    attempt = models.PositiveIntegerField(default=1)
    transient_retries = models.PositiveIntegerField(default=0)
    step = models.CharField(max_length=20, blank=True, help_text="Last completed pipeline step")
    base_commit = models.CharField(max_length=64, blank=True)
    snapshot_id = models.BigIntegerField(
        null=True, blank=True, help_text="SandboxSnapshot the variants fork from"
    )
    error = models.TextField(blank=True)
    # The campaign image the run's sandboxes use, and its validation of the untouched
    # repository (campaigns.environment, campaigns.baseline).
    # db_default: runs_create inserts runs with raw SQL that names only older columns.
    image_key = models.CharField(max_length=64, blank=True, db_index=True, db_default="")
    baseline = models.CharField(max_length=8, choices=Validation, blank=True, db_default="")
    baseline_error = models.TextField(blank=True, db_default="")
    error_signature = models.CharField(max_length=16, blank=True, db_index=True)
    error_summary = models.CharField(max_length=300, blank=True)
    # On a pending run: the worker that earmarked it to take next, a hint (dispatch.Earmark).
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid holding the lease")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "repository"], name="run_once_per_repo")
        ]
        indexes = [
            models.Index(fields=["campaign", "state"]),
            models.Index(fields=["state", "heartbeat_at"]),
            # The next pending run of a campaign (slot hand-off, dispatch) in one index probe:
            # with (campaign, state) PostgreSQL walked the primary key past every finished run
            # (50 ms per hand-off at 53,000 finished runs in the scale simulation).
            models.Index(
                fields=["campaign", "id"],
                condition=models.Q(state="pending"),
                name="run_pending_by_campaign",
            ),
            # The same for the run end's hand-off (`dispatch._handoff_ctes`), ordered by
            # `id + 0` so that no other index can serve its ORDER BY. By id, PostgreSQL's
            # planner still chose the primary key while many runs were pending, and walked
            # past every finished one: its run-end statement went from 6 to 41 ms over a
            # 10,000-run campaign (docs/benchmarks.md).
            models.Index(
                models.F("campaign"),
                models.F("id") + 0,
                condition=models.Q(state="pending"),
                name="run_pending_handoff",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}/{self.repository_id}"

    @property
    def is_final(self) -> bool:
        return self.state in RUN_FINAL_STATES


class CampaignRevision(models.Model):
    """One applied version of a launched campaign's spec (campaigns.revisions)."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    spec = models.JSONField()
    spec_source = models.TextField(blank=True)
    plan = models.JSONField(default=dict, help_text="What the revision re-ran and added")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["campaign", "number"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "number"], name="revision_number_once")
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} r{self.number}"


class RunTransition(models.Model):
    """Every run state change with its time: the campaign burndown is drawn from these."""

    run = models.ForeignKey(RepoRun, on_delete=models.CASCADE, related_name="transitions")
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="+")
    from_state = models.CharField(max_length=12)
    to_state = models.CharField(max_length=12)
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["campaign", "at"])]

    def __str__(self) -> str:
        return f"{self.run_id}: {self.from_state} -> {self.to_state}"


class VariantState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"  # transform and validation ran; see `validation`
    FAILED = "failed"  # the transform itself failed or its sandbox broke
    CANCELLED = "cancelled"


VARIANT_FINAL_STATES = (VariantState.COMPLETED, VariantState.FAILED, VariantState.CANCELLED)


class Variant(models.Model):
    run = models.ForeignKey(RepoRun, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(max_length=100)
    position = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=12, choices=VariantState, default=VariantState.PENDING)
    attempt = models.PositiveIntegerField(default=0, help_text="Executions started")
    sandbox_id = models.BigIntegerField(null=True, blank=True)
    patch = models.BinaryField(default=bytes, help_text="git diff --binary against base_commit")
    patch_truncated = models.BooleanField(default=False)
    diff_sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    files_changed = models.PositiveIntegerField(default=0)
    insertions = models.PositiveIntegerField(default=0)
    deletions = models.PositiveIntegerField(default=0)
    diffstat = models.JSONField(default=list, help_text="[{path, added, deleted}] per file")
    validation = models.CharField(
        max_length=8, choices=Validation, default=Validation.NONE, blank=True
    )
    output_tail = models.TextField(blank=True, help_text="Tail of the last step's output")
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="variant_once_per_run")]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.name}"

    @property
    def outcome(self) -> Outcome:
        """passes / fixes / still failing / regresses, against the run's baseline."""
        return Outcome.of(baseline=self.run.baseline, validation=self.validation)

    @property
    def diff(self) -> str:
        """The stored patch as text, secrets and all: pages, the API and reports show
        `secret_grants.variant_diffs_for_display` (masked where the diff was flagged)."""
        return bytes(self.patch).decode("utf-8", errors="replace")


class Secret(models.Model):
    """A named value injected into the sandboxes of campaigns that list it; never shown again."""

    name = models.CharField(max_length=100, unique=True)
    ciphertext = models.BinaryField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SecretGrant(models.Model):
    """An admin's permission for a secret to enter sandboxes: those of one campaign, or of every
    campaign one manager owns. Without a grant a spec may not name the secret."""

    secret = models.ForeignKey(Secret, on_delete=models.CASCADE, related_name="grants")
    campaign = models.ForeignKey(
        Campaign, null=True, blank=True, on_delete=models.CASCADE, related_name="secret_grants"
    )
    manager = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="secret_grants",
    )
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    granted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["secret__name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(campaign__isnull=True) ^ models.Q(manager__isnull=True),
                name="secret_grant_one_grantee",
            ),
            models.UniqueConstraint(fields=["secret", "campaign"], name="secret_grant_campaign"),
            models.UniqueConstraint(fields=["secret", "manager"], name="secret_grant_manager"),
        ]

    def __str__(self) -> str:
        return f"{self.secret_id} → {self.campaign_id or self.manager_id}"


class SecretLeak(models.Model):
    """A variant's diff that contains a secret's value (in some encoding). It may not be
    approved or published until an admin overrides the finding with a reason."""

    variant = models.OneToOneField(Variant, on_delete=models.CASCADE, related_name="secret_leak")
    names = models.JSONField(default=list, help_text="Names of the secrets found")
    forms = models.JSONField(default=list, help_text="How they were written (plain, base64, …)")
    # The values found, {name: value} as JSON, encrypted as `Secret.ciphertext` is: the diff is
    # masked with these, so rotating (or deleting) a secret does not unmask it. Empty for leaks
    # found before it was kept (masked with the current values).
    values_ciphertext = models.BinaryField(default=b"", blank=True)
    found_at = models.DateTimeField(auto_now_add=True)
    overridden_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    overridden_at = models.DateTimeField(null=True, blank=True)
    override_reason = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"leak in variant {self.variant_id}: {', '.join(self.names)}"


COUNT_COLUMNS = (
    "pending",
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "todo",
    "approved",
    "rejected",
    "published",
)


class CountDelta(models.Model):
    """A change to one campaign's counts: runs by state, and the review queue's buckets.

    Rows are written by database triggers in the transaction that changes the counted rows
    (this app's migration 0007 for run states, review's 0004 for the buckets), so every write
    path is counted, bulk inserts and QuerySet.update included. A campaign's counts are the sum
    of its rows; campaigns.counters reads and compacts them. Insert-only: no shared row is
    locked, so concurrent workers neither wait on each other nor deadlock. No foreign key: a
    campaign's deletion may fire triggers after its row is gone.
    """

    campaign_id = models.BigIntegerField(db_index=True)
    pending = models.IntegerField(db_default=0)
    queued = models.IntegerField(db_default=0)
    running = models.IntegerField(db_default=0)
    succeeded = models.IntegerField(db_default=0)
    failed = models.IntegerField(db_default=0)
    cancelled = models.IntegerField(db_default=0)
    todo = models.IntegerField(db_default=0)
    approved = models.IntegerField(db_default=0)
    rejected = models.IntegerField(db_default=0)
    published = models.IntegerField(db_default=0)

    def __str__(self) -> str:
        return f"counts delta {self.pk} of campaign {self.campaign_id}"
