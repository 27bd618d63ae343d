"""API routes for campaigns (with their runs and variants), repositories and secrets.

Thin: fetch through the permission helpers in `campaigns.selectors` (404 / 403), call a
service, answer a schema from `campaigns.schemas`. Refusals are core errors, mapped once by
config/errors.py; no route catches them.
"""

from ninja import Query, Router, Status

from campaigns import selectors, services
from campaigns.models import Campaign, Variant
from campaigns.schemas import (
    CampaignDetailOut,
    CampaignIn,
    CampaignOut,
    RepositoryIn,
    RepositoryOut,
    RetryIn,
    RetryOut,
    RunDetailOut,
    RunOut,
    RunsPageOut,
    SecretIn,
    SecretOut,
)
from campaigns.secret_api import ROUTERS as secret_grant_routers
from campaigns.secret_grants import variant_diffs_for_display
from campaigns.secrets import secret_set
from core.errors import Invalid
from core.schemas import OFFSET_MAX, errors_for

campaigns_router = Router(tags=["campaigns"])
repositories_router = Router(tags=["repositories"])
secrets_router = Router(tags=["secrets"])


def _detail(campaign: Campaign) -> CampaignDetailOut:
    return CampaignDetailOut.build(
        campaign,
        counts=selectors.campaign_counts(campaign=campaign),
        clusters=selectors.error_clusters(campaign=campaign),
    )


# --- campaigns ------------------------------------------------------------------------------


@campaigns_router.post("", response={201: CampaignDetailOut, **errors_for(403, 422)})
def campaign_create(request, data: CampaignIn):
    """Create a draft from `yaml` (the spec as text) or `spec` (the spec as JSON)."""
    selectors.campaign_manage_check(user=request.auth)
    if (data.yaml is None) == (data.spec is None):
        raise Invalid(
            "Send either `yaml` (the spec as text) or `spec` (the spec as JSON).", field="yaml"
        )
    campaign = services.campaign_create(actor=request.auth, source=data.yaml, data=data.spec)
    return Status(201, _detail(campaign))


@campaigns_router.get("", response={200: list[CampaignOut], **errors_for(422)})
def campaign_list(
    request,
    state: str | None = None,
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
):
    campaigns = selectors.campaign_list(user=request.auth)
    if state:
        campaigns = campaigns.filter(state=state)
    page = list(campaigns[offset : offset + limit])
    counts = selectors.campaigns_counts(campaign_ids=[c.pk for c in page])
    return [CampaignOut.build(c, runs=counts[c.pk]) for c in page]


@campaigns_router.get("/{campaign_id}", response={200: CampaignDetailOut, **errors_for(404)})
def campaign_detail(request, campaign_id: str):
    """A campaign by id or name, with counts by state and failure clusters."""
    return _detail(selectors.campaign_get_for_user(user=request.auth, pk=campaign_id))


@campaigns_router.post(
    "/{campaign_id}/launch", response={200: CampaignDetailOut, **errors_for(403, 404, 409)}
)
def campaign_launch(request, campaign_id: str):
    campaign = selectors.campaign_get_for_user(user=request.auth, pk=campaign_id, action="manage")
    return _detail(services.campaign_launch(campaign=campaign, actor=request.auth))


@campaigns_router.post(
    "/{campaign_id}/cancel", response={200: CampaignDetailOut, **errors_for(403, 404, 409)}
)
def campaign_cancel(request, campaign_id: str):
    campaign = selectors.campaign_get_for_user(user=request.auth, pk=campaign_id, action="manage")
    return _detail(services.campaign_cancel(campaign=campaign, actor=request.auth))


@campaigns_router.post(
    "/{campaign_id}/retry",
    response={200: RetryOut, **errors_for(403, 404, 409, 422)},
    openapi_extra=RetryIn.openapi_body(),
)
def campaign_retry(request, campaign_id: str, signature: str | None = None):
    """Retry every failed run, or one cluster: `?signature=` or a JSON body `{"signature": …}`."""
    campaign = selectors.campaign_get_for_user(user=request.auth, pk=campaign_id, action="manage")
    signature = RetryIn.from_request(request).signature or signature
    ids = services.campaign_retry(campaign=campaign, actor=request.auth, signature=signature)
    return RetryOut(retried=len(ids), run_ids=ids)


@campaigns_router.get("/{campaign_id}/runs", response={200: RunsPageOut, **errors_for(404, 422)})
def campaign_runs(
    request,
    campaign_id: str,
    state: str | None = None,
    signature: str | None = None,
    repository: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
):
    """The campaign's runs, filtered by state, error signature or repository (id or name)."""
    campaign = selectors.campaign_get_for_user(user=request.auth, pk=campaign_id)
    runs = selectors.runs_filter(
        campaign=campaign, state=state, signature=signature, repository=repository
    )
    page = list(runs[offset : offset + limit])
    variants: dict[int, list[Variant]] = {r.pk: [] for r in page}
    for v in Variant.objects.filter(run__in=page).defer("patch").order_by("position"):
        variants[v.run_id].append(v)
    return RunsPageOut(count=runs.count(), items=[RunOut.build(r, variants[r.pk]) for r in page])


@campaigns_router.get(
    "/{campaign_id}/runs/{run_id}", response={200: RunDetailOut, **errors_for(404)}
)
def campaign_run(request, campaign_id: str, run_id: int):
    """One run with its error and each variant's diff."""
    campaign = selectors.campaign_get_for_user(user=request.auth, pk=campaign_id)
    run = selectors.run_get_for_user(user=request.auth, pk=run_id, campaign=campaign)
    variants = selectors.run_variants(run=run)
    return RunDetailOut.build(run, variants, variant_diffs_for_display(variants=variants))


# --- repositories ---------------------------------------------------------------------------


@repositories_router.get("", response={200: list[RepositoryOut], **errors_for(422)})
def repository_list(
    request,
    tag: str | None = None,
    limit: int = Query(500, ge=1, le=5000),
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
):
    repos = selectors.repositories_for_user(user=request.auth, tag=tag)
    return list(repos[offset : offset + limit])


@repositories_router.post("", response={201: RepositoryOut, **errors_for(403, 422)})
def repository_register(request, data: RepositoryIn):
    """Register a repository by URL (idempotent: a known URL answers its row)."""
    selectors.campaign_manage_check(user=request.auth)
    (repo,) = services.repositories_register(
        entries=[{"url": data.url, "ref": data.ref}], tags=data.tags, actor=request.auth
    )
    return Status(201, repo)


# --- secrets --------------------------------------------------------------------------------


@secrets_router.get("", response={200: list[SecretOut], **errors_for(403)})
def secret_list(request):
    """Secret names and dates; values are never answered."""
    return list(selectors.secrets_for_user(user=request.auth))


@secrets_router.post("", response={201: SecretOut, **errors_for(403, 422)})
def secret_store(request, data: SecretIn):
    """Store or rotate a secret (write-only)."""
    selectors.secret_manage_check(user=request.auth)
    return Status(201, secret_set(name=data.name, value=data.value, actor=request.auth))


ROUTERS = [
    ("/campaigns", campaigns_router),
    ("/repositories", repositories_router),
    ("/secrets", secrets_router),
    *secret_grant_routers,
]
