"""API routes for model providers (admins): list, add or change, remove. Keys are write-only."""

from ninja import Router, Status

from agents.providers import KEEP, provider_remove, provider_set, providers_for_user
from agents.schemas import ProviderIn, ProviderOut
from core.errors import NotFound
from core.schemas import errors_for

providers_router = Router(tags=["model providers"])


@providers_router.get("", response={200: list[ProviderOut], **errors_for(403)})
def provider_list(request):
    """The providers agent variants may call (never their keys)."""
    return providers_for_user(user=request.auth)


@providers_router.post("", response={201: ProviderOut, **errors_for(403, 422)})
def provider_store(request, data: ProviderIn):
    """Add a provider or change one by name (`key` omitted keeps the stored key; so do the
    ceilings, where `max_run_budget_usd: null` removes that one)."""
    given = data.model_fields_set
    return Status(
        201,
        provider_set(
            name=data.name,
            api_style=data.api_style,
            base_url=data.base_url,
            key=data.key,
            allowed_models=data.allowed_models,
            input_usd_per_mtok=data.input_usd_per_mtok,
            output_usd_per_mtok=data.output_usd_per_mtok,
            max_campaign_budget_usd=data.max_campaign_budget_usd,
            max_run_budget_usd=data.max_run_budget_usd if "max_run_budget_usd" in given else KEEP,
            actor=request.auth,
        ),
    )


@providers_router.delete("/{name}", response={204: None, **errors_for(403, 404, 409)})
def provider_delete(request, name: str):
    if len(name) > 100:
        raise NotFound(f"no model provider named {name[:100]!r}")
    provider_remove(name=name, actor=request.auth)
    return Status(204, None)


ROUTERS = [("/agents/providers", providers_router)]
