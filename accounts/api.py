"""API routes for the caller and their tokens."""

from django.shortcuts import get_object_or_404
from ninja import Router

from accounts.models import ApiToken
from accounts.roles import ALL_CAPABILITIES, user_can, user_role
from accounts.schemas import MeOut, TokenCreatedOut, TokenIn, TokenOut
from accounts.services import token_create, token_revoke

router = Router(tags=["people"])


def _token_out(token: ApiToken) -> dict:
    return {
        "id": token.pk,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": token.created_at.isoformat(),
        "revoked": token.revoked_at is not None,
    }


@router.get("/me", response=MeOut)
def me(request):
    user = request.auth
    return {
        "id": user.pk,
        "username": user.username,
        "role": user_role(user),
        "capabilities": [c for c in ALL_CAPABILITIES if user_can(user, c)],
        "auth": "token" if hasattr(user, "_convoy_api_token") else "session",
    }


@router.get("/tokens", response=list[TokenOut])
def tokens_list(request):
    return [_token_out(t) for t in request.auth.api_tokens.order_by("-created_at")]


@router.post("/tokens", response={201: TokenCreatedOut})
def tokens_create(request, data: TokenIn):
    token, raw = token_create(user=request.auth, name=data.name, actor=request.auth)
    return 201, {**_token_out(token), "token": raw}


@router.delete("/tokens/{token_id}", response=TokenOut)
def tokens_revoke(request, token_id: int):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.auth)
    return _token_out(token_revoke(token=token, actor=request.auth))


ROUTERS = [("/", router)]
