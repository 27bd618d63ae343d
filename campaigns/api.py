"""API routes for campaigns, their runs and variants, repositories and secrets."""

from ninja import Query, Router, Status

from accounts.auth import require_capability
from campaigns import secrets, selectors, services
from campaigns.models import Campaign, RepoRun, Repository, Secret, Variant
from campaigns.schemas import (
    CampaignDetailOut,
    CampaignIn,
    CampaignOut,
    RepositoryIn,
    RepositoryOut,
    RetryIn,
    RetryOut,
    RunDetailOut,
    RunsPageOut,
    SecretIn,
    SecretOut,
)
from core.errors import Invalid

router = Router(tags=["campaigns"])


def campaign_out(campaign: Campaign, runs: dict[str, int]) -> dict:
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "description": campaign.description,
        "state": campaign.state,
        "backend": campaign.backend,
        "max_parallel": campaign.max_parallel,
        "four_eyes": campaign.four_eyes,
        "owner": campaign.owner.username,
        "created_at": campaign.created_at,
        "launched_at": campaign.launched_at,
        "finished_at": campaign.finished_at,
        "variants": campaign.variant_names,
        "runs": runs,
    }


def _detail(campaign: Campaign) -> dict:
    counts = selectors.campaign_counts(campaign=campaign)
    return {
        **campaign_out(campaign, counts["runs"]),
        "spec": campaign.spec,
        "counts": counts,
        "clusters": selectors.error_clusters(campaign=campaign),
    }


def _variant_out(variant: Variant, *, diff: bool = False) -> dict:
    out = {
        "id": variant.pk,
        "name": variant.name,
        "state": variant.state,
        "validation": variant.validation,
        "attempt": variant.attempt,
        "sandbox_id": variant.sandbox_id,
        "files_changed": variant.files_changed,
        "insertions": variant.insertions,
        "deletions": variant.deletions,
        "diffstat": variant.diffstat,
        "diff_sha256": variant.diff_sha256,
        "duration_ms": variant.duration_ms,
        "error": variant.error,
        "output_tail": variant.output_tail,
    }
    if diff:
        out.update(diff=variant.diff, patch_truncated=variant.patch_truncated)
    return out


def _run_out(run: RepoRun, variants: list[Variant]) -> dict:
    return {
        "id": run.pk,
        "repository": run.repository.name,
        "repository_id": run.repository_id,
        "url": run.repository.url,
        "ref": run.ref,
        "state": run.state,
        "attempt": run.attempt,
        "base_commit": run.base_commit,
        "error_signature": run.error_signature,
        "error_summary": run.error_summary,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "variants": [_variant_out(v) for v in variants],
    }


def _campaign_for(request, campaign_id: str, *, write: bool = False) -> Campaign:
    if write:
        require_capability(request, "campaign_manage")
    return selectors.campaign_get_for_user(user=request.auth, pk=campaign_id, write=write)


@router.post("/campaigns", response={201: CampaignDetailOut})
def campaign_create(request, data: CampaignIn):
    require_capability(request, "campaign_manage")
    if (data.yaml is None) == (data.spec is None):
        raise Invalid(
            "Send either `yaml` (the spec as text) or `spec` (the spec as JSON).", field="yaml"
        )
    campaign = services.campaign_create(actor=request.auth, source=data.yaml, data=data.spec)
    return Status(201, _detail(campaign))


@router.get("/campaigns", response=list[CampaignOut])
def campaign_list(
    request,
    state: str | None = None,
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0),
):
    campaigns = selectors.campaign_list(user=request.auth)
    if state:
        campaigns = campaigns.filter(state=state)
    page = list(campaigns[offset : offset + min(limit, 500)])
    counts = selectors.campaigns_counts(campaign_ids=[c.pk for c in page])
    return [campaign_out(c, counts[c.pk]) for c in page]


@router.get("/campaigns/{campaign_id}", response=CampaignDetailOut)
def campaign_detail(request, campaign_id: str):
    return _detail(_campaign_for(request, campaign_id))


@router.post("/campaigns/{campaign_id}/launch", response=CampaignDetailOut)
def campaign_launch(request, campaign_id: str):
    campaign = _campaign_for(request, campaign_id, write=True)
    campaign = services.campaign_launch(campaign=campaign, actor=request.auth)
    return _detail(campaign)


@router.post("/campaigns/{campaign_id}/cancel", response=CampaignDetailOut)
def campaign_cancel(request, campaign_id: str):
    campaign = _campaign_for(request, campaign_id, write=True)
    campaign = services.campaign_cancel(campaign=campaign, actor=request.auth)
    return _detail(campaign)


@router.post("/campaigns/{campaign_id}/retry", response=RetryOut)
def campaign_retry(request, campaign_id: str, signature: str | None = None):
    """Retry every failed run, or one cluster: `?signature=` or a JSON body `{"signature": …}`."""
    campaign = _campaign_for(request, campaign_id, write=True)
    if request.body and request.content_type == "application/json":
        try:
            signature = RetryIn.model_validate_json(request.body).signature or signature
        except ValueError:
            raise Invalid('expected {"signature": "<error signature>"}', field="body") from None
    ids = services.campaign_retry(campaign=campaign, actor=request.auth, signature=signature)
    return {"retried": len(ids), "run_ids": ids}


@router.get("/campaigns/{campaign_id}/runs", response=RunsPageOut)
def campaign_runs(
    request,
    campaign_id: str,
    state: str | None = None,
    signature: str | None = None,
    repository: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
):
    campaign = _campaign_for(request, campaign_id)
    runs = selectors.runs_filter(
        campaign=campaign, state=state, signature=signature, repository=repository
    )
    page = list(runs[offset : offset + limit])
    variants: dict[int, list[Variant]] = {r.pk: [] for r in page}
    for v in Variant.objects.filter(run__in=page).defer("patch").order_by("position"):
        variants[v.run_id].append(v)
    return {"count": runs.count(), "items": [_run_out(r, variants[r.pk]) for r in page]}


@router.get("/campaigns/{campaign_id}/runs/{run_id}", response=RunDetailOut)
def campaign_run(request, campaign_id: str, run_id: int):
    campaign = _campaign_for(request, campaign_id)
    run = selectors.run_get_for_user(user=request.auth, pk=run_id, campaign=campaign)
    variants = selectors.run_variants(run=run)
    return {
        **_run_out(run, variants),
        "error": run.error,
        "variants_detail": [_variant_out(v, diff=True) for v in variants],
    }


@router.get("/repositories", response=list[RepositoryOut])
def repository_list(
    request,
    tag: str | None = None,
    limit: int = Query(500, ge=1, le=5000),
    offset: int = Query(0, ge=0),
):
    if not selectors.user_may_see(request.auth):
        return []
    repos = Repository.objects.all()
    if tag:
        repos = repos.filter(pk__in=services._repos_by_tag(tag))
    return list(repos[offset : offset + min(limit, 5000)])


@router.post("/repositories", response={201: RepositoryOut})
def repository_register(request, data: RepositoryIn):
    require_capability(request, "campaign_manage")
    (repo,) = services.repositories_register(
        entries=[{"url": data.url, "ref": data.ref}], tags=data.tags
    )
    return Status(201, repo)


@router.get("/secrets", response=list[SecretOut])
def secret_list(request):
    require_capability(request, "secret_manage")
    return list(Secret.objects.all())


@router.post("/secrets", response={201: SecretOut})
def secret_set(request, data: SecretIn):
    require_capability(request, "secret_manage")
    secret = secrets.secret_set(name=data.name, value=data.value, actor=request.auth)
    return Status(201, secret)


ROUTERS = [("/", router)]
