"""`review.require`: which validation outcomes bulk approval accepts.

One look at one diff approves many repositories in bulk, so a variant whose validation tells
against it is held back from that and reviewed one by one (a single approval stays possible,
behind a confirmation naming the outcome). The outcome is the variant's validation read
against its run's baseline (campaigns.models.Outcome):

- `passes_or_fixes` (default): validation passed (whatever the baseline: passes or fixes), or
  the spec has no validate steps. Held back: regresses, still failing, and, with
  `baseline: false`, fails.
- `passes`: validation passed and the baseline did not fail (it passed, or there was none).
  Held back as well: fixes (the tests were red before; a fix deserves its own look).
- `any`: nothing is held back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet

from campaigns.models import Campaign, Outcome, RepoRun, Validation, VariantState
from campaigns.spec_fields import REVIEW_REQUIRE
from review.models import ReviewState, RunReview, VariantDigest

REQUIRE_DEFAULT = REVIEW_REQUIRE[0]
HELD_BACK_LIMIT = 200  # held-back runs listed for one group; the count covers them all
MEMBERS_PAGE = 1000  # a group's digests read at a time while listing its first members


def campaign_require(campaign: Campaign) -> str:
    """The campaign's `review.require` (specs older than the field mean the default)."""
    require = ((campaign.spec or {}).get("review") or {}).get("require")
    return require if require in REVIEW_REQUIRE else REQUIRE_DEFAULT


def require_q(require: str, *, prefix: str = "") -> Q:
    """The variants (fields under `prefix`) that `require` lets bulk approval take."""
    if require == "passes_or_fixes":
        return Q(**{f"{prefix}validation__in": [Validation.PASSED, Validation.SKIPPED]})
    if require == "passes":
        return Q(**{f"{prefix}validation": Validation.PASSED}) & ~Q(
            **{f"{prefix}run__baseline": Validation.FAILED}
        )
    return Q()


def require_allows(*, require: str, validation: str, baseline: str) -> bool:
    """The same rule as `require_q`, for one variant already loaded."""
    if require == "passes_or_fixes":
        return validation in (Validation.PASSED, Validation.SKIPPED)
    if require == "passes":
        return validation == Validation.PASSED and baseline != Validation.FAILED
    return True


def held_reason(*, validation: str, baseline: str) -> str:
    """What a held-back variant did, in the words the pages use: regresses, fixes, …"""
    outcome = Outcome.of(baseline=baseline, validation=validation)
    return outcome.value.replace("_", " ") if outcome else "not validated"


def approve_warning(*, campaign: Campaign, variant) -> str:
    """The confirmation a single approval of a held-back variant asks for; "" when allowed."""
    if variant is None:
        return ""
    require, baseline = campaign_require(campaign), variant.run.baseline
    if require_allows(require=require, validation=variant.validation, baseline=baseline):
        return ""
    reason = held_reason(validation=variant.validation, baseline=baseline)
    return (
        f"“{variant.name}” {reason} against the baseline, so review.require ({require}) keeps "
        "it out of bulk approval. Approve this change anyway?"
    )


def bulk_candidates(*, campaign: Campaign, variant_name: str) -> QuerySet[VariantDigest]:
    """Digests of completed `variant_name` variants whose run still needs a decision, whatever
    their validation (`require_q` narrows them to what bulk approval may take)."""
    # "No review, or one still undecided" as "no decided review": the outer join and its
    # `IS NULL OR` made the planner guess a few hundred of a campaign's runs undecided and join
    # every run of every campaign in loops; the anti-join is estimated from the reviews.
    decided = RunReview.objects.filter(run_id=OuterRef("variant__run_id")).exclude(
        state__in=[ReviewState.UNREVIEWED, ReviewState.PICKED]
    )
    return (
        VariantDigest.objects.filter(
            campaign=campaign,
            variant__name=variant_name,
            variant__state=VariantState.COMPLETED,
            diff_sha256=F("variant__diff_sha256"),
        )
        .filter(~Exists(decided))
        .exclude(group_key="")
    )


@dataclass
class HeldBackSummary:
    """Runs waiting for a decision that bulk approval leaves out, by reason."""

    require: str
    by_reason: Counter = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def text(self, reasons: Counter | None = None) -> str:
        """The reasons as a phrase, most frequent first: "3 regress, 1 still failing"."""
        reasons = self.by_reason if reasons is None else reasons
        ordered = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{n} {_verb(reason, n)}" for reason, n in ordered)


def _verb(reason: str, n: int) -> str:
    # "1 regresses", "3 regress"; labels that are not verbs read the same either way.
    if n != 1 and reason in ("regresses", "fixes"):
        return reason[:-2]
    if n != 1 and reason == "fails":
        return "fail"
    return reason


def group_member_ids(
    candidates: QuerySet[VariantDigest], *, campaign: Campaign, group_key: str, limit: int
) -> list[int]:
    """The variant ids of the first `limit` of `candidates` in group `group_key`, in order.

    Read a slice of the group at a time along its index (`digest_group_members`): listing 200
    members of a 90,000-run group reads a slice or two, where one query ordering every
    candidate read all 90,000 first (the planner cannot tell how few it needs). The callers
    load the rows to show by these ids: joined to their runs and repositories here, a slice
    could be planned as a scan of every run."""
    found: list[int] = []
    after, page = 0, MEMBERS_PAGE
    group = VariantDigest.objects.filter(campaign=campaign, group_key=group_key)
    while len(found) < limit:
        rest = (
            group.filter(variant_id__gt=after)
            .order_by("variant_id")
            .values_list("variant_id", flat=True)
        )
        last = rest[page - 1 : page].first()  # where this slice ends; None: the group's end
        if last is None and not rest.exists():
            break
        part = candidates.filter(group_key=group_key, variant_id__gt=after)
        part = part if last is None else part.filter(variant_id__lte=last)
        found += part.order_by("variant_id").values_list("variant_id", flat=True)[
            : limit - len(found)
        ]
        if last is None:
            break
        after, page = last, min(page * 4, 64 * MEMBERS_PAGE)
    return found


def digests_shown(ids: list[int]) -> list[VariantDigest]:
    """The digests `ids` in order, with the run and repository a list shows (no patch)."""
    return list(
        VariantDigest.objects.filter(variant_id__in=ids)
        .select_related("variant__run__repository")
        .defer("changes", "variant__patch", "variant__output_tail", "variant__diffstat")
        .order_by("variant_id")
    )


def bulk_held_back(
    *, campaign: Campaign, variant_name: str, require: str | None = None, group_key: str = ""
) -> HeldBackSummary:
    """What `review.require` keeps out of bulk approval for `variant_name` (one query), in one
    group when `group_key` is given."""
    require = require or campaign_require(campaign)
    summary = HeldBackSummary(require=require)
    if require == "any":
        return summary
    held = bulk_candidates(campaign=campaign, variant_name=variant_name).exclude(
        require_q(require, prefix="variant__")
    )
    if group_key:
        held = held.filter(group_key=group_key)
    rows = (
        held.values("variant__validation", "variant__run__baseline")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for row in rows:
        reason = held_reason(
            validation=row["variant__validation"], baseline=row["variant__run__baseline"]
        )
        summary.by_reason[reason] += row["n"]
    return summary


def bulk_held_back_runs(
    *, campaign: Campaign, variant_name: str, group_key: str, require: str | None = None
) -> list[tuple[RepoRun, str]]:
    """The runs of one group that `review.require` holds back, each with its reason."""
    require = require or campaign_require(campaign)
    if require == "any":
        return []
    held = digests_shown(
        group_member_ids(
            bulk_candidates(campaign=campaign, variant_name=variant_name).exclude(
                require_q(require, prefix="variant__")
            ),
            campaign=campaign,
            group_key=group_key,
            limit=HELD_BACK_LIMIT,
        )
    )
    return [
        (
            d.variant.run,
            held_reason(validation=d.variant.validation, baseline=d.variant.run.baseline),
        )
        for d in held
    ]
