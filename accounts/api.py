"""API routes for the caller and their tokens."""

from ninja import Router, Status

from accounts.models import ApiToken
from accounts.roles import ALL_CAPABILITIES, user_can, user_role
from accounts.schemas import MeOut, TokenCreatedOut, TokenIn, TokenOut
from accounts.selectors import token_get_for_user, tokens_for_user
from accounts.services import token_create, token_revoke
from core.errors import PermissionDenied
from core.schemas import errors_for

router = Router(tags=["people"])


def _token_out(token: ApiToken) -> dict:
    return {
        "id": token.pk,
        "name": token.name,
        "prefix": token.prefix,
        "scope": token.scope,
        "created_at": token.created_at.isoformat(),
        "expires_at": token.expires_at.isoformat(),
        "expires_soon": token.expires_soon,
        "expired": token.expired,
        "revoked": token.revoked_at is not None,
    }


@router.get("/me", response={200: MeOut})
def me(request):
    """Who the caller is, their role and what it allows."""
    user = request.auth
    return {
        "id": user.pk,
        "username": user.username,
        "role": user_role(user),
        "capabilities": [c for c in ALL_CAPABILITIES if user_can(user, c)],
        "auth": "token" if hasattr(user, "_convoy_api_token") else "session",
    }


@router.get("/tokens", response={200: list[TokenOut]})
def tokens_list(request):
    """The caller's own tokens, newest first (never their secret values)."""
    return [_token_out(t) for t in tokens_for_user(user=request.auth)]


@router.post("/tokens", response={201: TokenCreatedOut, **errors_for(403, 422)})
def tokens_create(request, data: TokenIn):
    """A new token for the caller, `read` scope and 90 days unless asked (at most
    CONVOY_API_TOKEN_MAX_DAYS); its value is in this answer and nowhere else, ever. Only
    from a signed-in session: a token minting tokens would outlive its own revocation (a
    leaked token's children kept working)."""
    if hasattr(request.auth, "_convoy_api_token"):
        raise PermissionDenied("create API tokens from a signed-in session, not with a token")
    token, raw = token_create(
        user=request.auth, name=data.name, scope=data.scope, days=data.days, actor=request.auth
    )
    return Status(201, {**_token_out(token), "token": raw})


@router.delete("/tokens/{token_id}", response={200: TokenOut, **errors_for(404)})
def tokens_revoke(request, token_id: int):
    """Revoke one of the caller's tokens; revoking it again changes nothing."""
    token = token_get_for_user(user=request.auth, pk=token_id)
    return _token_out(token_revoke(token=token, actor=request.auth))


ROUTERS = [("/", router)]
