"""Review reads: the queue, a run's variants side by side, bulk groups, dashboard figures.

Every list here is paginated and costs a fixed number of queries whatever the run count:
counts are aggregates, pages are sliced querysets, and patches (the large column) are loaded
only for the one run or group being shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.core.cache import cache
from django.core.paginator import Page, Paginator
from django.db.models import (
    Count,
    Exists,
    F,
    FloatField,
    Func,
    Max,
    Min,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Floor

from campaigns.models import (
    RUN_FINAL_STATES,
    Campaign,
    RepoRun,
    RunState,
    RunTransition,
    SecretLeak,
    Validation,
    Variant,
    VariantState,
)
from campaigns.secret_grants import variant_patch_for_display
from core.errors import Invalid, NotFound
from core.ids import id_parse
from review.digests import digest_shown
from review.groups import change_difference, near_identical
from review.models import (
    Changeset,
    ChangesetState,
    Decision,
    DecisionKind,
    ReviewState,
    RunReview,
    VariantDigest,
)
from review.publish_text import publish_text_changes, publish_text_for
from review.require import (
    bulk_candidates,
    campaign_require,
    digests_shown,
    group_member_ids,
    require_q,
)

PAGE_SIZE = 50
# Columns of a variant a list needs; `patch` stays in the database until a diff is shown.
VARIANT_LIST_FIELDS = (
    "id",
    "run_id",
    "name",
    "position",
    "state",
    "diff_sha256",
    "files_changed",
    "insertions",
    "deletions",
    "validation",
    "duration_ms",
    "patch_truncated",
)
TEXT_CHANGED = "approved, text changed: needs approval"
QUEUE_FILTERS = {
    "todo": "needs a decision",
    "approved": "approved",
    "text_changed": TEXT_CHANGED,
    "rejected": "rejected",
    "published": "published",
    "all": "all finished runs",
}


def review_is_approved(review: RunReview | None, variant: Variant | None) -> bool:
    """Approved, and the approved diff is still the variant's diff."""
    return bool(
        review is not None
        and review.state == ReviewState.APPROVED
        and variant is not None
        and review.approved_hash
        and review.approved_hash == variant.diff_sha256
    )


def approval_standing(review: RunReview | None) -> Decision | None:
    """The approval the run's review stands on: its latest one not withdrawn, on the approved
    diff (an undo puts the review back on the one before)."""
    if review is None or review.state != ReviewState.APPROVED or not review.approved_hash:
        return None
    return (
        Decision.objects.filter(
            run_id=review.run_id,
            kind=DecisionKind.APPROVE,
            withdrawn_at__isnull=True,
            diff_hash=review.approved_hash,
        )
        .order_by("-pk")
        .first()
    )


def approval_text_changes(*, review: RunReview | None, campaign: Campaign) -> list[str]:
    """The `changeset.*` fields whose text to publish changed since the standing approval (a
    revision): publishing them needs approval again. An approval from before the text was bound
    (NULL) binds it when publishing is requested."""
    approval = approval_standing(review)
    if approval is None or approval.publish_text is None:
        return []
    return publish_text_changes(approval.publish_text, publish_text_for(campaign))


def _standing_publish_hash() -> Subquery:
    """The publish hash of the approval each run's review stands on (as `approval_standing`
    finds it), for a queryset of runs; "" for an approval from before texts were bound."""
    return Subquery(
        Decision.objects.filter(
            run_id=OuterRef("pk"),
            kind=DecisionKind.APPROVE,
            withdrawn_at__isnull=True,
            diff_hash=OuterRef("review__approved_hash"),
        )
        .order_by("-pk")
        .values("publish_hash")[:1]
    )


def _text_changed_runs(*, campaign: Campaign) -> QuerySet[RepoRun]:
    """Runs approved on their current diff whose approval bound a text to publish that a
    revision has changed since (their pull request, if still open, says the old text):
    publishing them needs approval again. Merged and closed pull requests are past updating."""
    return (
        RepoRun.objects.filter(
            campaign=campaign,
            state=RunState.SUCCEEDED,
            review__state=ReviewState.APPROVED,
            review__approved_hash=F("review__variant__diff_sha256"),
        )
        .exclude(changeset__state__in=[ChangesetState.MERGED, ChangesetState.CLOSED])
        .alias(standing_publish_hash=_standing_publish_hash())
        .exclude(standing_publish_hash__in=["", publish_text_for(campaign).sha256])
        .filter(standing_publish_hash__isnull=False)
    )


def text_changed_count(*, campaign: Campaign) -> int:
    """How many changes are "approved, text changed: needs approval". Not a kept count (the
    text is the campaign's, not the run's): an approval that binds another text than today's
    is looked for first, so a campaign whose text never changed pays one small query."""
    current = publish_text_for(campaign).sha256
    stale = (
        Decision.objects.filter(
            run__campaign_id=campaign.pk, kind=DecisionKind.APPROVE, withdrawn_at__isnull=True
        )
        .exclude(publish_hash__in=["", current])
        .exists()
    )
    return _text_changed_runs(campaign=campaign).count() if stale else 0


def publish_all_runs(*, campaign: Campaign) -> QuerySet[RepoRun]:
    """The runs "Publish all" queues: approved on their current diff and never published, or
    failed, or published with another diff (a rerun approved again) or another text (approved
    again after a revision: `changeset_text_update_due`) than their approval's, while their
    pull request is neither merged nor closed. `change_publish` decides each one as a single
    publish does."""
    unfinished = ~Q(changeset__state__in=[ChangesetState.MERGED, ChangesetState.CLOSED])
    return (
        RepoRun.objects.filter(
            campaign=campaign,
            review__state=ReviewState.APPROVED,
            review__approved_hash=F("review__variant__diff_sha256"),
        )
        .alias(standing_publish_hash=_standing_publish_hash())
        .filter(
            Q(changeset__isnull=True)
            | Q(changeset__state=ChangesetState.FAILED)
            | (unfinished & ~Q(changeset__diff_hash=F("review__approved_hash")))
            | (
                unfinished
                & Q(standing_publish_hash__isnull=False)
                & ~Q(standing_publish_hash="")
                & ~Q(standing_publish_hash=F("changeset__publish_hash"))
            )
        )
    )


def publish_all_counts(*, campaign: Campaign) -> dict[str, int]:
    """How many changes "Publish all" would queue: `total`, of which `updates` are published
    already (their branch and pull request get the newly approved diff or text)."""
    published = [state for state in ChangesetState.values if state != ChangesetState.FAILED]
    return publish_all_runs(campaign=campaign).aggregate(
        total=Count("pk"), updates=Count("pk", filter=Q(changeset__state__in=published))
    )


def changeset_text_update_due(*, review: RunReview | None, changeset: Changeset | None) -> bool:
    """The change was published, then approved again with a new text (a revision changed it):
    publishing now updates its branch and open pull request. Merged or closed, it is past
    updating."""
    if changeset is None or changeset.state in (ChangesetState.MERGED, ChangesetState.CLOSED):
        return False
    approval = approval_standing(review)
    return bool(
        approval is not None
        and approval.publish_hash
        and changeset.diff_hash == review.approved_hash
        and changeset.publish_hash != approval.publish_hash
    )


def _list_variants() -> Prefetch:
    return Prefetch(
        "variants",
        queryset=Variant.objects.only(*VARIANT_LIST_FIELDS).order_by("position"),
        to_attr="variant_list",
    )


def _has_change() -> Q:
    """The run has a completed variant that changed something (else there is nothing to review)."""
    return Q(
        Exists(
            Variant.objects.filter(run=OuterRef("pk"), state=VariantState.COMPLETED).exclude(
                diff_sha256=""
            )
        )
    )


def review_queue(
    *, campaign: Campaign, which: str = "todo", page: int | str = 1, count: int | None = None
) -> Page:
    """Finished runs for review, oldest first, with their variants and review state.

    "todo" holds runs never decided, picked but not approved, and approved runs whose diff
    changed since (those need approval again).
    """
    paginator = Paginator(_queue_runs(campaign=campaign, which=which), PAGE_SIZE)
    if count is not None:
        # The caller has the bucket's count (review.counts): skip a count query.
        paginator.count = count
    return paginator.get_page(page)


def review_next(*, campaign: Campaign, limit: int = 10) -> list[RepoRun]:
    """The first runs waiting for a decision (the dashboard's short queue)."""
    return list(_queue_runs(campaign=campaign, which="todo")[:limit])


def review_next_after(*, campaign: Campaign, run_id: int) -> int | None:
    """The id of the next run waiting for a decision after `run_id` (wrapping), or None."""
    todo = _queue_runs(campaign=campaign, which="todo").exclude(pk=run_id)
    later = todo.filter(pk__gt=run_id).values_list("pk", flat=True).first()
    return later if later is not None else todo.values_list("pk", flat=True).first()


def decision_latest(*, run: RepoRun, actor) -> Decision | None:
    """The actor's last decision on this run that still stands (what Undo withdraws)."""
    return (
        Decision.objects.filter(run_id=run.pk, actor=actor, withdrawn_at__isnull=True)
        .order_by("-pk")
        .first()
    )


def decision_get(*, campaign: Campaign, pk: int | str, required: bool = True) -> Decision | None:
    """A decision on a run of this campaign, with its run (404 otherwise, or None when not
    `required`)."""
    decision = (
        Decision.objects.filter(pk=pk, run__campaign=campaign)
        .select_related("run", "run__repository", "run__campaign")
        .first()
    )
    if decision is None and required:
        raise NotFound("No such decision in this campaign.")
    return decision


def queue_bucket_q(which: str) -> Q:
    """The runs of a queue filter, among a campaign's succeeded runs ("all" is every one).

    "todo" holds runs never decided, picked but not approved, and approved runs whose diff
    changed since (those need approval again), when they changed something. The counts the
    pages show are kept by triggers from the same definition (review migration 0004).
    """
    stale = Q(review__state=ReviewState.APPROVED) & ~Q(
        review__approved_hash=F("review__variant__diff_sha256")
    )
    if which == "todo":
        return (
            Q(review__isnull=True)
            | Q(review__state__in=[ReviewState.UNREVIEWED, ReviewState.PICKED])
            | stale
        ) & _has_change()
    if which == "approved":
        return Q(review__state=ReviewState.APPROVED, changeset__isnull=True) & ~stale
    if which == "rejected":
        return Q(review__state=ReviewState.REJECTED)
    if which == "published":
        return Q(changeset__isnull=False)
    return Q()


def _queue_runs(*, campaign: Campaign, which: str) -> QuerySet[RepoRun]:
    # Variants are deferred with only(); review__variant needs its hash only.
    if which == "text_changed":
        runs = _text_changed_runs(campaign=campaign)
    else:
        runs = RepoRun.objects.filter(campaign=campaign, state=RunState.SUCCEEDED).filter(
            queue_bucket_q(which)
        )
    return (
        runs.annotate(standing_publish_hash=_standing_publish_hash())
        .select_related("repository", "review", "review__variant", "changeset")
        .prefetch_related(_list_variants())
        .order_by("id")
        .defer(
            "review__variant__patch",
            "review__variant__output_tail",
            "review__variant__error",
            "review__variant__diffstat",
        )
    )


@dataclass
class QueueSlice:
    count: int
    items: list[QueueRow]


def queue_slice(
    *, campaign: Campaign, which: str = "todo", limit: int = 100, offset: int = 0
) -> QueueSlice:
    """`limit` rows of a queue filter (QUEUE_FILTERS, as the queue page lists them) from
    `offset`, and how many the filter holds: the API's queue."""
    if which not in QUEUE_FILTERS:
        raise Invalid(f"expected one of {', '.join(QUEUE_FILTERS)}", field="which")
    runs = _queue_runs(campaign=campaign, which=which)
    return QueueSlice(
        count=runs.count(), items=queue_rows(runs[offset : offset + limit], campaign=campaign)
    )


def run_neighbours(*, run: RepoRun) -> dict[str, int | None]:
    """Previous and next run of the same campaign in queue order (for j/k on the run page)."""
    base = RepoRun.objects.filter(campaign_id=run.campaign_id, state=RunState.SUCCEEDED)
    prev_id = base.filter(id__lt=run.pk).aggregate(v=Max("id"))["v"]
    next_id = base.filter(id__gt=run.pk).aggregate(v=Min("id"))["v"]
    return {"prev": prev_id, "next": next_id}


@dataclass
class RunComparison:
    run: RepoRun
    variants: list[Variant]
    review: RunReview | None
    decisions: list[Decision]
    changeset: Changeset | None


def run_comparison(*, run: RepoRun) -> RunComparison:
    variants = list(run.variants.order_by("position"))
    review = RunReview.objects.filter(run_id=run.pk).select_related("decided_by").first()
    decisions = list(
        Decision.objects.filter(run_id=run.pk).select_related("actor").order_by("-id")[:20]
    )
    changeset = Changeset.objects.filter(run_id=run.pk).first()
    return RunComparison(run, variants, review, decisions, changeset)


@dataclass
class BulkGroup:
    group_key: str
    count: int
    variant_name: str
    sample: Variant
    runs: list[RepoRun]
    more: int
    files: list[str] = field(default_factory=list)
    summary: str = ""
    changes: list = field(default_factory=list)
    # Near-identical groups: (group, how many lines tell the two apart), closest first.
    near: list[tuple[BulkGroup, int]] = field(default_factory=list)
    number: int = 0
    # Each listed run with the diff hash it is shown with: an approval is bound to that hash.
    members: list[tuple[RepoRun, str]] = field(default_factory=list)
    # The campaign's text to publish (title, body, commit message, author) as shown with the
    # group: a bulk approval names it back.
    publish_hash: str = ""

    @property
    def label(self) -> str:
        shown = ", ".join(self.files[:3])
        return shown + (f" and {len(self.files) - 3} more" if len(self.files) > 3 else "")


def bulk_groups(
    *, campaign: Campaign, variant_name: str, limit: int = 20, repos_shown: int = 200
) -> list[BulkGroup]:
    """Runs whose `variant_name` diffs make the same change, largest group first.

    Only completed variants whose outcome the campaign's `review.require` accepts
    (review.require), in runs that still need a decision, are grouped. Groups changing the same
    files with a few differing lines are linked to each other as near-identical (from stored
    digests; no diff is parsed here).
    """
    require = campaign_require(campaign)
    eligible = bulk_candidates(campaign=campaign, variant_name=variant_name).filter(
        require_q(require, prefix="variant__")
    )
    top = list(
        eligible.values("group_key")
        .annotate(n=Count("variant"))
        .order_by("-n", "group_key")[:limit]
    )
    publish_hash = publish_text_for(campaign).sha256 if top else ""
    groups = []
    for number, row in enumerate(top, start=1):
        members = digests_shown(
            group_member_ids(
                eligible, campaign=campaign, group_key=row["group_key"], limit=repos_shown
            )
        )
        first = VariantDigest.objects.select_related("variant").get(pk=members[0].pk)
        groups.append(
            BulkGroup(
                group_key=row["group_key"],
                count=row["n"],
                variant_name=variant_name,
                sample=first.variant,
                runs=[m.variant.run for m in members],
                more=max(0, row["n"] - len(members)),
                files=first.files,
                summary=first.summary,
                changes=first.changes,
                number=number,
                members=[(m.variant.run, m.diff_sha256) for m in members],
                publish_hash=publish_hash,
            )
        )
    for g in groups:
        near = ((o, near_identical(g.changes, o.changes)) for o in groups if o is not g)
        g.near = sorted(((o, n) for o, n in near if n is not None), key=lambda p: p[1])
    _groups_masked(groups)
    return groups


def _groups_masked(groups: list[BulkGroup]) -> None:
    """Show a group whose sample diff was flagged as the other pages show it: its files, summary
    and change lines come from the masked patch (they were the stored digest's, secret whole).
    Near-identical links are made before, from the stored lines, so masking does not join or
    split groups; the lines marked as differing are then read from the masked lines as drawn."""
    flagged = set(
        SecretLeak.objects.filter(variant_id__in=[g.sample.pk for g in groups]).values_list(
            "variant_id", flat=True
        )
    )
    for g in groups:
        if g.sample.pk in flagged:
            shown = digest_shown(variant_patch_for_display(variant=g.sample))
            g.files, g.summary, g.changes = shown["files"], shown["summary"], shown["changes"]


def bulk_group_differing(group: BulkGroup) -> set[tuple[str, str]]:
    """The lines of `group` that its closest near-identical group does not change."""
    return change_difference(group.changes, group.near[0][0].changes) if group.near else set()


class _Epoch(Func):
    """Seconds since 1970 of a datetime column, on PostgreSQL and SQLite alike."""

    output_field = FloatField()

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(
            compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)", **extra
        )

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(
            compiler,
            connection,
            template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)",
            **extra,
        )


def burndown(
    *, campaign: Campaign, points: int = 60, total: int | None = None
) -> list[tuple[float, int]]:
    """(seconds since launch, repositories not yet finished) from stored run transitions.

    Moves into a final state finish a run; a retry (final -> pending) un-finishes it. The
    database counts the moves in at most `points` time buckets, so neither the number of runs
    nor the campaign's duration changes the cost of drawing it.
    """
    if total is None:
        total = RepoRun.objects.filter(campaign=campaign).count()
    start = campaign.launched_at
    if start is None:
        return [(0.0, total)]
    finals = list(RUN_FINAL_STATES)
    finishing = Q(to_state__in=finals) & ~Q(from_state__in=finals)
    reopening = Q(from_state__in=finals) & ~Q(to_state__in=finals)
    moves = RunTransition.objects.filter(campaign=campaign).filter(finishing | reopening)
    last = moves.aggregate(last=Max("at"))["last"]
    if last is None:
        return [(0.0, total)]
    # The series only changes when a run finishes or reopens: keep it until the next move.
    key = f"convoy:burndown:{campaign.pk}:{total}:{points}:{last.timestamp()}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    span = max((last - start).total_seconds(), 1.0)
    step = span / points
    rows = (
        moves.annotate(
            # SQLite's julianday carries ~50 µs of error: a move on a bucket's edge could
            # fall into the bucket before; 1 ms of tolerance puts it in its own.
            bucket=Floor((_Epoch("at") - Value(start.timestamp() - 0.001)) / Value(step)),
        )
        .values("bucket")
        .annotate(done=Count("id", filter=finishing), undone=Count("id", filter=reopening))
        .order_by("bucket")
    )
    series = [(0.0, total)]
    remaining = total
    for row in rows:
        remaining += row["undone"] - row["done"]
        at = min(span, max(0.0, (row["bucket"] + 1) * step))
        series.append((at, remaining))
    cache.set(key, series, timeout=600)
    return series


def changesets_for(*, campaign: Campaign, page: int | str = 1) -> Page:
    """One page of the campaign's changesets for the changesets page."""
    return Paginator(_changesets(campaign=campaign), PAGE_SIZE).get_page(page)


def _changesets(*, campaign: Campaign, state: str | None = None) -> QuerySet[Changeset]:
    qs = Changeset.objects.filter(campaign=campaign).select_related("run__repository")
    if state:
        qs = qs.filter(state=state)
    return qs.order_by("id")


@dataclass
class ChangesetSlice:
    count: int
    items: list[Changeset]


def changeset_slice(
    *, campaign: Campaign, state: str | None = None, limit: int = 100, offset: int = 0
) -> ChangesetSlice:
    """`limit` changesets from `offset` (optionally in one state), and how many there are."""
    qs = _changesets(campaign=campaign, state=state)
    return ChangesetSlice(count=qs.count(), items=list(qs[offset : offset + limit]))


@dataclass
class ReviewSummary:
    """A run's review as the API reports it; "unreviewed" when nobody decided yet."""

    run_id: int
    state: str
    approved: bool
    variant: str | None
    picked_hash: str = ""
    approved_hash: str = ""
    comment: str = ""
    decided_by: str | None = None
    decided_at: datetime | None = None
    publish_text: dict = field(default_factory=dict)
    publish_hash: str = ""
    publish_text_changes: list[str] = field(default_factory=list)


def run_review_summary(*, run: RepoRun) -> ReviewSummary:
    rv = RunReview.objects.select_related("variant", "decided_by").filter(run_id=run.pk).first()
    campaign = Campaign.objects.get(pk=run.campaign_id)
    text = publish_text_for(campaign)
    publishing = {
        "publish_text": text.as_dict(),
        "publish_hash": text.sha256,
        "publish_text_changes": approval_text_changes(review=rv, campaign=campaign),
    }
    if rv is None:
        return ReviewSummary(
            run_id=run.pk, state=ReviewState.UNREVIEWED, approved=False, variant=None, **publishing
        )
    return ReviewSummary(
        **publishing,
        run_id=run.pk,
        state=rv.state,
        approved=review_is_approved(rv, rv.variant),
        variant=rv.variant.name if rv.variant else None,
        picked_hash=rv.picked_hash,
        approved_hash=rv.approved_hash,
        comment=rv.comment,
        decided_by=rv.decided_by.username if rv.decided_by else None,
        decided_at=rv.decided_at,
    )


def run_variant_get(
    *, run: RepoRun, ref: int | str | None, required: bool = False
) -> Variant | None:
    """The run's variant named by id or name; None when not given (unless `required`)."""
    if ref is None or ref == "":
        if required:
            raise Invalid("variant: choose a variant", field="variant")
        return None
    number = id_parse(ref)
    lookup = {"pk": number} if number is not None else {"name": str(ref)[:100]}
    variant = run.variants.filter(**lookup).first()
    if variant is None:
        raise Invalid(f"variant: no variant {ref!r} in this run", field="variant")
    return variant


def variant_name_resolve(*, campaign: Campaign, name: str | None, strict: bool = False) -> str:
    """The variant name to group by: `name`, or the campaign's first when none is given.

    An unknown name falls back to the first (a page) or is refused (`strict`, the API).
    """
    names = variant_names(campaign=campaign)
    if not name:
        return names[0]
    if name not in names:
        if strict:
            raise Invalid(f"variant: no variant named {name!r} in this campaign", field="variant")
        return names[0]
    return name


def variant_names(*, campaign: Campaign) -> list[str]:
    return list(campaign.variant_names) or ["default"]


def runs_page(*, qs: QuerySet, page: int | str) -> Page:
    return Paginator(qs, PAGE_SIZE).get_page(page)


def suggested_variant(variants: list[Variant], review: RunReview | None) -> Variant | None:
    """The picked variant, else the first that passed validation and changed something."""
    if review is not None and review.variant_id:
        for v in variants:
            if v.pk == review.variant_id:
                return v
    for v in variants:
        if (
            v.state == VariantState.COMPLETED
            and v.validation in (Validation.PASSED, Validation.SKIPPED)
            and v.diff_sha256
        ):
            return v
    return variants[0] if variants else None


@dataclass
class QueueRow:
    run: RepoRun
    variants: list[Variant]
    review: RunReview | None
    suggested: Variant | None
    status: str  # unreviewed, picked, approved, rejected, needs re-approval, published,
    # TEXT_CHANGED


def queue_rows(runs, *, campaign: Campaign | None = None) -> list[QueueRow]:
    """Rows of queue runs (`_queue_runs`); with their `campaign`, an approval whose text to
    publish a revision changed is marked so."""
    current = publish_text_for(campaign).sha256 if campaign is not None else None
    rows = []
    for run in runs:
        rv = getattr(run, "review", None) if _has(run, "review") else None
        variants = getattr(run, "variant_list", [])
        status = rv.state if rv else ReviewState.UNREVIEWED
        if (
            rv
            and rv.state == ReviewState.APPROVED
            and (rv.variant is None or rv.approved_hash != rv.variant.diff_sha256)
        ):
            status = "needs re-approval"
        if _has(run, "changeset"):
            status = "published"
        standing = getattr(run, "standing_publish_hash", None)
        if (
            current is not None
            and review_is_approved(rv, rv.variant if rv else None)
            and standing not in (None, "", current)
            and not (
                _has(run, "changeset")
                and run.changeset.state in (ChangesetState.MERGED, ChangesetState.CLOSED)
            )
        ):
            status = TEXT_CHANGED
        rows.append(QueueRow(run, variants, rv, suggested_variant(variants, rv), status))
    return rows


def _has(run: RepoRun, relation: str) -> bool:
    try:
        return getattr(run, relation) is not None
    except (RunReview.DoesNotExist, Changeset.DoesNotExist):
        return False


def changeset_counts(*, campaign: Campaign) -> dict[str, int]:
    counts = dict.fromkeys(ChangesetState.values, 0)
    counts.update(
        Changeset.objects.filter(campaign=campaign).values_list("state").annotate(n=Count("id"))
    )
    counts["total"] = sum(counts.values())
    return counts
