"""API routes for secret grants and for overriding a diff flagged for containing a secret."""

from datetime import datetime

from django.contrib.auth.models import User
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status
from pydantic import Field

from campaigns.models import Campaign, SecretGrant, Variant
from campaigns.secret_grants import (
    secret_grant,
    secret_grants_for_user,
    secret_revoke,
    variant_secret_override,
)
from campaigns.selectors import secret_manage_check
from core.errors import Invalid
from core.schemas import errors_for

grants_router = Router(tags=["secrets"])


class SecretGrantIn(Schema):
    name: str = Field(max_length=100)
    campaign: int | None = Field(default=None, ge=1, le=2**63 - 1)
    manager: str | None = Field(default=None, max_length=150, description="A username")


class SecretGrantOut(Schema):
    id: int
    name: str
    campaign: int | None
    manager: str | None
    granted_at: datetime

    @staticmethod
    def resolve_name(obj: SecretGrant) -> str:
        return obj.secret.name

    @staticmethod
    def resolve_campaign(obj: SecretGrant) -> int | None:
        return obj.campaign_id

    @staticmethod
    def resolve_manager(obj: SecretGrant) -> str | None:
        return obj.manager.username if obj.manager else None


class OverrideIn(Schema):
    reason: str = Field(max_length=2000)


class OverrideOut(Schema):
    variant: int
    names: list[str]
    forms: list[str]
    overridden_at: datetime | None

    @staticmethod
    def resolve_variant(obj) -> int:
        return obj.variant_id


@grants_router.get("", response={200: list[SecretGrantOut], **errors_for(403)})
def grant_list(request):
    """Which secrets each campaign (or manager) may give its sandboxes."""
    return list(secret_grants_for_user(user=request.auth))


@grants_router.post("", response={201: SecretGrantOut, **errors_for(403, 422)})
def grant_create(request, data: SecretGrantIn):
    """Grant a stored secret to one campaign or to one manager (all their campaigns)."""
    secret_manage_check(user=request.auth)
    campaign = manager = None
    if data.campaign is not None:
        campaign = Campaign.objects.filter(pk=data.campaign).first()
        if campaign is None:
            raise Invalid("no such campaign", field="campaign")
    if data.manager is not None:
        manager = User.objects.filter(username=data.manager).first()
        if manager is None:
            raise Invalid("no such user", field="manager")
    grant = secret_grant(name=data.name, campaign=campaign, manager=manager, actor=request.auth)
    return Status(201, grant)


@grants_router.delete("/{int:grant_id}", response={204: None, **errors_for(403, 404)})
def grant_revoke(request, grant_id: int):
    """Revoke a grant; runs that start later no longer receive the secret."""
    secret_revoke(grant_id=grant_id, actor=request.auth)
    return Status(204, None)


@grants_router.post(
    "/leaks/{int:variant_id}/override", response={200: OverrideOut, **errors_for(403, 404, 422)}
)
def leak_override(request, variant_id: int, data: OverrideIn):
    """Let a change whose diff contains a secret be approved and published (admins, audited)."""
    secret_manage_check(user=request.auth)
    variant = get_object_or_404(Variant, pk=variant_id)
    return variant_secret_override(variant=variant, actor=request.auth, reason=data.reason)


ROUTERS = [("/secret-grants", grants_router)]
