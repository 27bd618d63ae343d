"""Reads for people."""

from django.contrib.auth.models import User
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import TOKEN_PREFIX, token_digest


def user_for_token(*, raw: str) -> User | None:
    """The active user owning this token, or None for an unknown or revoked token."""
    if not raw.startswith(TOKEN_PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=token_digest(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Touch at most once a minute: a busy client must not turn every read into a write.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.user._convoy_api_token = token
    return token.user
