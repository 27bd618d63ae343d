"""Campaign reads: the permission helpers (one per object type), counts by state, filtered run
lists, failure clusters, repositories and secret names.

Views, API routes and commands fetch campaigns, runs and secrets only through the
`*_get_for_user` / `*_for_user` helpers here, so a refusal is the same everywhere: 404
(`NotFound`) for people who may not see campaigns at all, 403 (`PermissionDenied` naming the
capability, audited by config/errors.py) for people who may see but not change them.
"""

from __future__ import annotations

from typing import Literal

from django.db import connection
from django.db.models import Count, Max, QuerySet

from accounts.roles import user_can, user_role
from audit.models import AuditEvent
from campaigns.counters import counts_get
from campaigns.models import (
    Campaign,
    CampaignRevision,
    RepoRun,
    Repository,
    RunState,
    Secret,
    Variant,
    VariantState,
)
from core.errors import NotFound, PermissionDenied
from core.ids import id_parse

CampaignAction = Literal["view", "manage"]


def user_may_see(user) -> bool:
    return user.is_authenticated and user_role(user) is not None


def campaign_manage_check(*, user) -> None:
    """403 unless the user's role manages campaigns (creating one has no object to fetch)."""
    if not user_can(user, "campaign_manage"):
        raise PermissionDenied(
            "Your role does not allow changing campaigns (campaign manage).",
            capability="campaign_manage",
        )


def campaign_get_for_user(*, user, pk: int | str, action: CampaignAction = "view") -> Campaign:
    """The campaign `pk` (its id or its name) as `user` may use it for `action`.

    404 if the user may not see campaigns (or there is no such campaign); 403 if they may see
    it but `action` is "manage" and their role does not manage campaigns.
    """
    if not user_may_see(user):
        raise NotFound("No such campaign.")
    number = id_parse(pk)
    lookup = {"pk": number} if number is not None else {"name": str(pk)[:100]}
    campaign = Campaign.objects.select_related("owner", "launched_by").filter(**lookup).first()
    if campaign is None:
        raise NotFound("No such campaign.")
    if action == "manage":
        campaign_manage_check(user=user)
    return campaign


def run_get_for_user(
    *, user, pk: int, campaign: Campaign | None = None, action: CampaignAction = "view"
) -> RepoRun:
    """A run (of `campaign`, when given) as `user` may use it: 404 / 403 as for campaigns."""
    if not user_may_see(user):
        raise NotFound("No such run.")
    qs = RepoRun.objects.select_related("campaign", "repository")
    if campaign is not None:
        qs = qs.filter(campaign=campaign)
    run = qs.filter(pk=pk).first()
    if run is None:
        raise NotFound("No such run.")
    if action == "manage":
        campaign_manage_check(user=user)
    return run


def secret_manage_check(*, user) -> None:
    """403 unless the user's role manages secrets (admins)."""
    if not user_can(user, "secret_manage"):
        raise PermissionDenied(
            "Your role does not allow managing secrets (secret manage).",
            capability="secret_manage",
        )


def secrets_for_user(*, user) -> QuerySet[Secret]:
    """Stored secrets (names and dates: values are never read here); 403 as above."""
    secret_manage_check(user=user)
    return Secret.objects.all()


def repository_ids_by_tag(tag: str) -> list[int]:
    qs = Repository.objects.all()
    if connection.vendor == "postgresql":
        return list(qs.filter(tags__contains=[tag]).values_list("pk", flat=True))
    return [pk for pk, tags in qs.values_list("pk", "tags") if tag in (tags or [])]


def repositories_for_user(*, user, tag: str | None = None) -> QuerySet[Repository]:
    """Registered repositories (none for people who may not see campaigns)."""
    if not user_may_see(user):
        return Repository.objects.none()
    repos = Repository.objects.all()
    if tag:
        repos = repos.filter(pk__in=repository_ids_by_tag(tag))
    return repos


def campaign_list(*, user) -> QuerySet[Campaign]:
    if not user_may_see(user):
        return Campaign.objects.none()
    return Campaign.objects.select_related("owner").order_by("-created_at", "-id")


def campaign_counts(*, campaign: Campaign) -> dict:
    """Runs by state (every state present, zero when none), variants by state and outcome."""
    kept = counts_get(campaign_ids=[campaign.pk])[campaign.pk]
    runs = {s: kept[s] for s in RunState.values}
    variants = dict.fromkeys(VariantState.values, 0)
    validation = {"passed": 0, "failed": 0}
    for state, outcome, n in (
        Variant.objects.filter(run__campaign=campaign)
        .values_list("state", "validation")
        .annotate(n=Count("id"))
    ):
        variants[state] += n
        if outcome in validation:
            validation[outcome] += n
    total = sum(runs.values())
    final = runs["succeeded"] + runs["failed"] + runs["cancelled"]
    return {
        "runs": runs,
        "variants": variants,
        "validation": validation,
        "total": total,
        "final": final,
        "percent": int(100 * final / total) if total else 0,
    }


def campaigns_counts(*, campaign_ids: list[int]) -> dict[int, dict[str, int]]:
    """Runs by state for many campaigns in one query (the list page), from the kept counts."""
    return {
        cid: {s: kept[s] for s in RunState.values}
        for cid, kept in counts_get(campaign_ids=campaign_ids).items()
    }


def runs_filter(
    *,
    campaign: Campaign,
    state: str | None = None,
    signature: str | None = None,
    repository: str | None = None,
) -> QuerySet[RepoRun]:
    qs = RepoRun.objects.filter(campaign=campaign).select_related("repository").order_by("id")
    if state:
        qs = qs.filter(state=state)
    if signature:
        qs = qs.filter(error_signature=signature)
    if repository:
        if id_parse(repository) is not None:
            qs = qs.filter(repository_id=id_parse(repository))
        else:
            qs = qs.filter(repository__name__icontains=repository)
    return qs


def error_clusters(*, campaign: Campaign) -> list[dict]:
    """Failed runs grouped by error signature, biggest first."""
    rows = (
        RepoRun.objects.filter(campaign=campaign, state=RunState.FAILED)
        .values("error_signature")
        .annotate(count=Count("id"), summary=Max("error_summary"))
        .order_by("-count", "error_signature")
    )
    return [
        {"signature": r["error_signature"], "count": r["count"], "summary": r["summary"]}
        for r in rows
    ]


def run_variants(*, run: RepoRun) -> list[Variant]:
    return list(run.variants.order_by("position"))


def campaign_is_author(*, campaign: Campaign, user) -> bool:
    """Whether `user` wrote or started what the campaign's runs changed: its owner, whoever
    launched it, saved its spec while a draft, or applied one of its revisions (the four-eyes
    rule keeps each of them from approving those changes)."""
    if user.pk in (campaign.owner_id, campaign.launched_by_id):
        return True
    if CampaignRevision.objects.filter(campaign=campaign, created_by_id=user.pk).exists():
        return True
    return AuditEvent.objects.filter(
        campaign_id=campaign.pk,
        action="campaign.campaign.updated",
        outcome="success",
        actor_id=str(user.pk),
    ).exists()
