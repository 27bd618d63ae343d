"""Reads for people, and the permission helpers for people and API tokens."""

from django.contrib.auth.models import User
from django.utils import timezone

from accounts.models import ApiToken
from accounts.roles import ADMIN, MANAGER, REVIEWER, capability_require
from accounts.services import TOKEN_PREFIX, token_digest
from core.errors import NotFound, Unauthenticated

ADMINS_ONLY = "Only admins manage people."


def user_for_token(*, raw: str) -> User | None:
    """The active user owning this token, or None for an unknown token or an inactive owner's;
    a revoked or expired one is refused with 401 saying so (its owner learns to make a new one,
    not to look for a typo: a password change revokes every token). The user carries the token
    as `_convoy_api_token` (its scope, the audit's actor)."""
    if not raw.startswith(TOKEN_PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=token_digest(raw), user__is_active=True)
        .first()
    )
    if token is None:
        return None
    if token.revoked_at is not None:
        raise Unauthenticated(
            f"This API token ({token.prefix}…) was revoked on"
            f" {token.revoked_at:%Y-%m-%d %H:%M} UTC (a password change revokes every token);"
            " create a new one on the API tokens page.",
            code="token_revoked",
        )
    now = timezone.now()
    if token.expires_at <= now:
        raise Unauthenticated(
            f"This API token ({token.prefix}…) expired on {token.expires_at:%Y-%m-%d %H:%M} UTC;"
            " make a new one.",
            code="token_expired",
        )
    # Touch at most once a minute: a busy client must not turn every read into a write.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.user._convoy_api_token = token
    return token.user


def people_for_user(*, user: User) -> list[User]:
    """Everyone, with their role, for a user who may manage people (403 for anyone else)."""
    capability_require(user=user, capability="user_manage", message=ADMINS_ONLY)
    people = list(User.objects.order_by("username").prefetch_related("groups"))
    for person in people:
        person.role_name = _role_of(person)
    return people


def person_get_for_user(*, user: User, pk: int) -> User:
    """One person, for a user who may manage people: 403 for anyone else, 404 if no such."""
    capability_require(user=user, capability="user_manage", message=ADMINS_ONLY)
    person = User.objects.prefetch_related("groups").filter(pk=pk).first()
    if person is None:
        raise NotFound("No such person.")
    person.role_name = _role_of(person)
    return person


def tokens_for_user(*, user: User) -> list[ApiToken]:
    """The user's own API tokens, newest first (nobody lists another person's tokens)."""
    return list(user.api_tokens.order_by("-created_at"))


def token_get_for_user(*, user: User, pk: int) -> ApiToken:
    """One of the user's own tokens; 404 for any other (another's token is not revealed)."""
    token = ApiToken.objects.select_related("user").filter(pk=pk, user=user).first()
    if token is None:
        raise NotFound("No such token.")
    return token


def _role_of(person: User) -> str:
    if person.is_superuser:
        return ADMIN
    names = {g.name for g in person.groups.all()}  # prefetched
    return next((r for r in (ADMIN, MANAGER, REVIEWER) if r in names), "")  # as user_role
