"""Writes for people: users, roles and API tokens, each with its audit event."""

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken
from accounts.roles import ADMIN, ROLE_CAPABILITIES, ROLES, user_role
from accounts.sockets import user_sockets_close
from audit.record import audit_record
from core.errors import Invalid

TOKEN_PREFIX = "cvy_"  # noqa: S105 - a public marker, not a secret


class AccountError(Invalid):
    """A user-facing refusal with the field it is about (422 from the API)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)


def roles_ensure() -> None:
    """Create the role groups with their permissions (idempotent; runs after migrate)."""
    for role, capabilities in ROLE_CAPABILITIES.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = Permission.objects.filter(
            content_type__app_label="accounts", codename__in=capabilities
        )
        group.permissions.set(perms)


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def user_create(
    *, username: str, role: str, password: str, actor: User | None = None, email: str = ""
) -> User:
    if role not in ROLES:
        raise AccountError("role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if not username or len(username) > 150:
        raise AccountError("username", "must be 1 to 150 characters")
    try:  # letters, digits, @ . + - _: no spaces, no invisible or bidirectional characters
        UnicodeUsernameValidator()(username)
    except ValidationError:
        raise AccountError("username", "may hold only letters, digits and @ . + - _") from None
    # "Ada" beside "ada" would read as one person in the trail and the people list.
    same = User.objects.filter(username__iexact=username).values_list("username", flat=True)
    if same:
        raise AccountError("username", f"a user named {same[0]!r} already exists")
    if len(password) < 8:
        raise AccountError("password", "must be at least 8 characters")
    if actor is not None:  # an admin's choice: the validators self-service changes pass too
        try:
            validate_password(password, user=User(username=username, email=email))
        except ValidationError as exc:
            raise AccountError("password", " ".join(exc.messages)) from None
    user = User.objects.create_user(username=username, email=email, password=password)
    audit_record(
        action="people.user.created",
        actor=actor,
        target=user,
        payload={"username": username},
    )
    user_role_set(user=user, role=role, actor=actor)
    return user


def _other_active_admins(user: User) -> bool:
    """Is someone besides `user` still able to manage people (an active admin)?"""
    others = User.objects.filter(is_active=True).exclude(pk=user.pk)
    return others.filter(is_superuser=True).exists() or others.filter(groups__name=ADMIN).exists()


def _admins_lock() -> None:
    """Serialise the changes that can take an admin away: two admins demoting (or stopping)
    each other at once each saw the other still there, and both went. (No admin group yet:
    nobody holds the role by group, and nothing to serialise.)"""
    list(Group.objects.select_for_update().filter(name=ADMIN))


@transaction.atomic
def user_role_set(*, user: User, role: str, actor: User | None = None) -> User:
    if role not in ROLES:
        raise AccountError("role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if user.is_superuser and role != ADMIN:
        raise AccountError(
            "role", f"{user.username} is a superuser, always an admin; that is set on the host"
        )
    roles_ensure()
    _admins_lock()
    old = [g.name for g in user.groups.filter(name__in=ROLES)]
    if ADMIN in old and role != ADMIN and user.is_active and not _other_active_admins(user):
        raise AccountError("role", f"{user.username} is the last admin; make another admin first")
    for name in old:
        if name != role:
            user.groups.remove(Group.objects.get(name=name))
            audit_record(
                action="people.role.revoked", actor=actor, target=user, payload={"role": name}
            )
    if role not in old:
        user.groups.add(Group.objects.get(name=role))
        audit_record(action="people.role.granted", actor=actor, target=user, payload={"role": role})
    user.__dict__.pop("_convoy_role", None)
    for cache in ("_perm_cache", "_group_perm_cache", "_user_perm_cache"):
        user.__dict__.pop(cache, None)
    if set(old) != {role}:
        user_sockets_close(user_id=user.pk)  # reopened, they are checked for the new role
    return user


@transaction.atomic
def user_active_set(*, user: User, active: bool, actor: User) -> User:
    """Let a user sign in again, or stop them (their sessions and API tokens stop working)."""
    if user.is_active == active:
        return user
    if not active and user.pk == actor.pk:
        raise AccountError("active", "you cannot deactivate yourself")
    _admins_lock()
    user.__dict__.pop("_convoy_role", None)
    if not active and user_role(user) == ADMIN and not _other_active_admins(user):
        raise AccountError("active", f"{user.username} is the last admin; make another admin first")
    User.objects.filter(pk=user.pk).update(is_active=active)
    user.is_active = active
    payload = {"username": user.username}
    if (
        not active
    ):  # often for a leaked token or a stolen session: reactivation must not revive them
        payload["tokens_revoked"] = tokens_revoke_all(user=user)
        payload["sessions_ended"] = _sessions_end(user_id=user.pk)
    audit_record(
        action="people.user.reactivated" if active else "people.user.deactivated",
        actor=actor,
        target=user,
        payload=payload,
    )
    if not active:
        user_sockets_close(user_id=user.pk)
    return user


def tokens_revoke_all(*, user: User) -> int:
    """Revoke every active API token of `user`; the number revoked. The caller records it in
    its own event, in its own transaction (a deactivation, a password change or reset)."""
    return ApiToken.objects.filter(user=user, revoked_at=None).update(revoked_at=timezone.now())


def _sessions_end(*, user_id: int) -> int:
    """Delete the user's stored sessions (database sessions: each is decoded to find its user;
    a rare admin action). The number ended."""
    from django.contrib.sessions.models import Session

    mine = [
        s.pk
        for s in Session.objects.filter(expire_date__gt=timezone.now()).iterator()
        if s.get_decoded().get("_auth_user_id") == str(user_id)
    ]
    return Session.objects.filter(pk__in=mine).delete()[0]


TOKEN_DAYS_DEFAULT = 90


def token_days_allowed() -> tuple[int, int]:
    """A new token's lifetime in days: the default, and the most `CONVOY_API_TOKEN_MAX_DAYS`
    allows."""
    most = settings.API_TOKEN_MAX_DAYS
    return min(TOKEN_DAYS_DEFAULT, most), most


@transaction.atomic
def token_create(
    *,
    user: User,
    name: str = "",
    scope: str = ApiToken.Scope.READ,
    days: int | None = None,
    actor: User | None = None,
    by_operator: bool = False,
) -> tuple[ApiToken, str]:
    """Create a token living `days` (None: the default) with `scope` ("read": GET and HEAD
    only); the raw value is returned once and never stored. `actor` None: the user themself,
    unless `by_operator` (`manage.py` on the host: the trail says so)."""
    if scope not in ApiToken.Scope.values:
        raise AccountError("scope", f"unknown scope {scope!r}; expected read or write")
    default, most = token_days_allowed()
    days = default if days is None else days
    if not 1 <= days <= most:
        raise AccountError(
            "days", f"a token lives 1 to {most} days (CONVOY_API_TOKEN_MAX_DAYS); {days} asked"
        )
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name[:100],
        prefix=raw[: len(TOKEN_PREFIX) + 6],
        digest=token_digest(raw),
        scope=scope,
        expires_at=timezone.now() + timedelta(days=days),
    )
    audit_record(
        action="people.token.created",
        **_token_actor(actor or user, by_operator),
        target=token,
        payload={
            "user": user.username,
            "name": token.name,
            "prefix": token.prefix,
            "scope": token.scope,
            "expires_at": token.expires_at.isoformat(),
        },
    )
    return token, raw


def _token_actor(actor: User, by_operator: bool) -> dict:
    """Who a token event names: the person, or the host's operator (a management command)."""
    if by_operator:
        return {"actor": None, "actor_type": "system"}
    return {"actor": actor}


@transaction.atomic
def token_revoke(
    *, token: ApiToken, actor: User | None = None, by_operator: bool = False
) -> ApiToken:
    updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db()
    if updated:
        audit_record(
            action="people.token.revoked",
            **_token_actor(actor or token.user, by_operator),
            target=token,
            payload={"user": token.user.username, "prefix": token.prefix},
        )
    return token
