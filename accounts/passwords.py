"""Self-service password change (Django's validators decide what is acceptable), audited; and
the SQLite file kept private to Convoy's user."""

import os

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.services import AccountError
from accounts.sockets import user_sockets_close
from audit.record import audit_record


def user_password_change(*, user: User, old_password: str, new_password: str, actor: User) -> User:
    """Change `user`'s own password: the old one must match, the new one pass every validator."""
    if actor.pk != user.pk:
        raise AccountError("user", "people change only their own password here")
    if not user.check_password(old_password):
        raise AccountError("old_password", "the current password is not right")
    try:
        validate_password(new_password, user=user)
    except ValidationError as exc:
        raise AccountError("new_password1", " ".join(exc.messages)) from None
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])
        audit_record(action="people.password.changed", actor=actor, target=user)
        # Sockets opened before (an intruder's, say) are closed: reopening one needs a session
        # that survived the change, as this browser's does.
        user_sockets_close(user_id=user.pk)
    return user


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
