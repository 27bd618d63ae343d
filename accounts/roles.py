"""The three roles and what each may do."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from core.errors import PermissionDenied

MANAGER = "manager"
REVIEWER = "reviewer"
ADMIN = "admin"
ROLES = (MANAGER, REVIEWER, ADMIN)

ALL_CAPABILITIES = (
    "campaign_manage",
    "change_review",
    "audit_view",
    "user_manage",
    "secret_manage",
    "sandbox_view",
)
ROLE_CAPABILITIES = {
    MANAGER: ("campaign_manage",),
    REVIEWER: ("change_review",),
    ADMIN: ALL_CAPABILITIES,
}


def user_role(user: AbstractBaseUser | AnonymousUser) -> str | None:
    """The user's role name, or None. Superusers are admins."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return ADMIN
    cached = getattr(user, "_convoy_role", False)
    if cached is not False:
        return cached
    names = set(user.groups.values_list("name", flat=True))
    role = next((r for r in (ADMIN, MANAGER, REVIEWER) if r in names), None)
    user._convoy_role = role
    return role


def user_can(user: AbstractBaseUser | AnonymousUser, capability: str) -> bool:
    return user.is_authenticated and user.has_perm(f"accounts.{capability}")


def capability_require(
    *, user: AbstractBaseUser | AnonymousUser | None, capability: str, message: str = ""
) -> None:
    """Refuse with 403 unless the user's role has the capability (the refusal is audited where
    errors are mapped, config/errors.py). Pages, API routes and consumers all check this way."""
    if user is None or not user_can(user, capability):
        raise PermissionDenied(
            message or f"Your role does not allow this ({capability.replace('_', ' ')}).",
            capability=capability,
        )
