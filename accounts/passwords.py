"""Password changes, one's own, an admin's reset and the host operator's `manage.py
changepassword` (Django's validators decide what is acceptable), each audited and revoking the
person's API tokens; and the SQLite file kept private to Convoy's user."""

import os

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.roles import capability_require
from accounts.selectors import ADMINS_ONLY
from accounts.services import AccountError, tokens_revoke_all
from accounts.sockets import user_sockets_close
from audit.record import audit_record


def password_file_read(path) -> str:
    """The password in a `--password-file`: its first line, without the line's end (a space
    is part of the password; what follows the first line is not)."""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def user_password_change(*, user: User, old_password: str, new_password: str, actor: User) -> int:
    """Change `user`'s own password: the old one must match, the new one pass every validator.
    Their API tokens are revoked with it; the number revoked."""
    if actor.pk != user.pk:
        raise AccountError("user", "people change only their own password here")
    if not user.check_password(old_password):
        raise AccountError("old_password", "the current password is not right")
    return _password_store(
        user=user,
        new_password=new_password,
        field="new_password1",
        actor=actor,
        action="people.password.changed",
    )


def user_password_set(*, user: User, new_password: str, actor: User) -> int:
    """An admin sets someone else's password (they forgot theirs, or it leaked); it passes the
    same validators. Their API tokens are revoked with it; the number revoked. Their sessions
    end too: each carries a hash of the old password."""
    capability_require(user=actor, capability="user_manage", message=ADMINS_ONLY)
    if actor.pk == user.pk:
        raise AccountError("password", "change your own password on the Password page")
    if user.is_superuser:
        raise AccountError(
            "password", f"{user.username} is a superuser; their password is set on the host"
        )
    return _password_store(
        user=user,
        new_password=new_password,
        field="password",
        actor=actor,
        action="people.password.reset",
    )


def user_password_set_by_operator(*, user: User, new_password: str, command: str) -> int:
    """The host's operator sets `user`'s password with a management `command` (`changepassword`:
    a superuser's password is set only there). The same validators, token revocation and
    `people.password.reset` event as an admin's reset, recorded as the system's doing and
    naming the command. The number of tokens revoked."""
    return _password_store(
        user=user,
        new_password=new_password,
        field="password",
        actor=None,
        action="people.password.reset",
        command=command,
    )


def _password_store(
    *,
    user: User,
    new_password: str,
    field: str,
    actor: User | None,
    action: str,
    command: str = "",
) -> int:
    """The new password (refused, naming the form's `field`, unless every validator passes),
    its event and the revocation of the user's API tokens, together: a token is often what
    leaked with the old password, and a program holding one kept working after the change.
    `actor` None: the host's operator, through the management `command`."""
    try:
        validate_password(new_password, user=user)
    except ValidationError as exc:
        raise AccountError(field, " ".join(exc.messages)) from None
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])
        revoked = tokens_revoke_all(user=user)
        payload = {"username": user.username, "tokens_revoked": revoked}
        if actor is None:
            payload["command"] = command
        audit_record(
            action=action,
            actor=actor,
            actor_type="system" if actor is None else None,
            target=user,
            payload=payload,
        )
        # Sockets opened before (an intruder's, say) are closed: reopening one needs a session
        # that survived the change, as this browser's does.
        user_sockets_close(user_id=user.pk)
    return revoked


def sqlite_file_private(sender, connection, **kwargs) -> None:
    """`connection_created` receiver: the SQLite database and its WAL files are 0600."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or name.startswith(":memory:") or "mode=memory" in name:
        return
    for path in (name, f"{name}-wal", f"{name}-shm"):
        try:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        except FileNotFoundError:
            continue
