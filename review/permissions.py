"""Who may see and decide review objects: one helper per object, used by pages and the API alike.

Seeing follows the campaign (`campaigns.selectors.campaign_get_for_user`: 404 for people who
may not see campaigns). Deciding (pick, approve, reject, publish) needs the `change_review`
capability (403). Approving also obeys the four-eyes rule, checked first so that the person who
launched a campaign hears about the rule whatever their role.
"""

from __future__ import annotations

from typing import Literal

from django.core import signing

from accounts.roles import user_can
from campaigns.models import Campaign, RepoRun, Variant
from campaigns.selectors import campaign_get_for_user, run_get_for_user
from core.errors import Invalid, PermissionDenied
from review.services import four_eyes_check

SHOWN_SALT = "review.diff-shown"
SHOWN_MAX_AGE_S = 24 * 3600

ReviewAction = Literal["view", "decide", "approve"]


def review_decide_check(*, user) -> None:
    """Refuse (403) a user whose role does not review changes."""
    if not user_can(user, "change_review"):
        raise PermissionDenied(
            "Your role does not allow reviewing changes (change review).",
            capability="change_review",
        )


def review_campaign_get_for_user(*, user, pk: int | str, action: ReviewAction = "view") -> Campaign:
    """The campaign whose review the user looks at (404), checked for deciding when asked (403).

    "approve" on a whole campaign (bulk approval) checks the four-eyes rule in the service,
    which knows the runs; here it is the same as "decide".
    """
    campaign = campaign_get_for_user(user=user, pk=pk)
    if action != "view":
        review_decide_check(user=user)
    return campaign


def review_run_get_for_user(
    *, user, campaign_pk: int | str, pk: int, action: ReviewAction = "view"
) -> RepoRun:
    """A run of the campaign the user may see (404 otherwise), checked for `action` (403)."""
    campaign = campaign_get_for_user(user=user, pk=campaign_pk)
    run = run_get_for_user(user=user, pk=pk, campaign=campaign)
    if action == "approve":
        four_eyes_check(run=run, actor=user)
    if action != "view":
        review_decide_check(user=user)
    return run


def diff_shown_token(*, user, variant: Variant) -> str:
    """Proof, signed into the page that shows this variant's diff, that it was shown to `user`."""
    return signing.dumps([user.pk, variant.pk, variant.diff_sha256], salt=SHOWN_SALT)


def diff_shown_check(*, user, variant: Variant | None, diff_hash: str, token: str) -> None:
    """Refuse an approval from a page that did not show this diff (the queue, a stale tab).

    Pages approve only with the token the comparison page signs beside the diff it shows; the
    API, whose clients fetch the diff themselves, names the hash instead.
    """
    try:
        shown = signing.loads(token or "", salt=SHOWN_SALT, max_age=SHOWN_MAX_AGE_S)
    except signing.BadSignature:
        shown = None
    if variant is None or shown != [user.pk, variant.pk, diff_hash]:
        raise Invalid(
            "Approve from the page that shows this diff: open the change and review it first.",
            field="shown",
        )
