"""Reads behind the campaign list (search, sort, pages) and the home page (what needs me).

A list's query comes from the page's GET parameters through `ListQuery`, which accepts only
known sort keys, so a URL cannot order by an arbitrary column.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.core.paginator import Page, Paginator
from django.db.models import Count, Q

from accounts.roles import user_can
from campaigns.models import Campaign, CampaignState, RepoRun, RunState
from campaigns.selectors import campaign_list, campaigns_counts, user_may_see

PAGE_SIZE = 25
CAMPAIGN_SORTS = {
    "created": "-created_at",
    "name": "name",
    "state": "state",
    "owner": "owner__username",
    "updated": "-updated_at",
}
ACTIVE_STATES = (CampaignState.RUNNING, CampaignState.PREVIEWING)


@dataclass(frozen=True)
class ListQuery:
    q: str = ""
    state: str = ""
    sort: str = "created"
    page: str = "1"

    @classmethod
    def from_params(cls, params, *, sorts: dict[str, str]) -> ListQuery:
        sort = params.get("sort") or "created"
        return cls(
            q=(params.get("q") or "").strip()[:100],
            state=(params.get("state") or "").strip()[:20],
            sort=sort if sort in sorts else "created",
            page=params.get("page") or "1",
        )

    def params(self, **override) -> str:
        """The query string for a link that keeps this query (and changes `override`)."""
        values = {"q": self.q, "state": self.state, "sort": self.sort, **override}
        return urlencode({k: v for k, v in values.items() if v})


def campaign_search(*, user, query: ListQuery) -> Page:
    """Campaigns the user may see, matching `q` in name or description, in one state, sorted."""
    rows = campaign_list(user=user)
    if query.q:
        rows = rows.filter(Q(name__icontains=query.q) | Q(description__icontains=query.q))
    if query.state in CampaignState.values:
        rows = rows.filter(state=query.state)
    rows = rows.order_by(CAMPAIGN_SORTS[query.sort], "-id")
    return Paginator(rows, PAGE_SIZE).get_page(query.page)


def home_for_user(*, user) -> dict:
    """The person's running campaigns with their counts, campaigns with failed runs, and the
    campaigns whose review queue the view counts (those with finished runs)."""
    if not user_may_see(user):
        return {"mine": [], "failures": [], "reviewable": []}
    mine = list(
        Campaign.objects.filter(Q(owner=user) | Q(launched_by=user), state__in=ACTIVE_STATES)
        .select_related("owner")
        .order_by("-updated_at")[:20]
    )
    counts = campaigns_counts(campaign_ids=[c.pk for c in mine])
    manages = user_can(user, "campaign_manage")
    failures = []
    if manages:
        failed = (
            RepoRun.objects.filter(
                state=RunState.FAILED,
                campaign__state__in=[*ACTIVE_STATES, CampaignState.COMPLETED],
            )
            .filter(Q(campaign__owner=user) | Q(campaign__launched_by=user))
            .values("campaign_id", "campaign__name")
            .annotate(n=Count("id"))
            .order_by("-n")[:20]
        )
        failures = [
            {"id": r["campaign_id"], "name": r["campaign__name"], "failed": r["n"]} for r in failed
        ]
    reviewable = list(
        Campaign.objects.filter(state__in=[CampaignState.RUNNING, CampaignState.COMPLETED])
        .filter(runs__state=RunState.SUCCEEDED)
        .distinct()
        .order_by("-updated_at")[:50]
    )
    return {
        "mine": [(c, counts[c.pk]) for c in mine],
        "failures": failures,
        "reviewable": reviewable,
        "manages": manages,
    }
