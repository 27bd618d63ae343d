"""Stored secrets: encrypted at rest, written by admins; `campaigns.secret_grants` decides which
campaigns' sandboxes receive them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.record import audit_record
from campaigns.models import (
    Secret,
)
from campaigns.states import RunFailed
from core.crypto import secrets_fernet
from core.errors import Conflict, Invalid
from core.text import text_problem

_fernet = secrets_fernet  # the key is shared with model providers' keys (core.crypto)


SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
SECRET_MAX_BYTES = 64 * 1024
# Control characters a secret may hold: tabs and line ends (a key file; a browser's textarea
# sends CRLF). Any other reaches a sandbox's environment as a surprise, NUL not at all.
_CONTROLS_KEPT = "\t\n\r"


def secret_value_problem(value: str) -> str | None:
    """Why `value` cannot be stored as a secret, or None."""
    if not value:
        return "must not be empty"
    if problem := text_problem(value):
        return problem
    if any((ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0) and ch not in _CONTROLS_KEPT for ch in value):
        return "must not contain control characters (other than tabs and line breaks)"
    if len(value.encode()) > SECRET_MAX_BYTES:
        return f"must be at most {SECRET_MAX_BYTES // 1024} KB"
    return None


def secret_set(*, name: str, value: str, actor) -> Secret:
    """Store or rotate a secret. The value is encrypted and can never be read back by people."""
    if not SECRET_NAME_RE.match(name or ""):
        raise Invalid("use letters, digits and '_' (an environment variable name)", field="name")
    if problem := secret_value_problem(value):
        raise Invalid(problem, field="value")
    token = _fernet().encrypt(value.encode())
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(name=name).first()
        if secret is None:
            try:
                with transaction.atomic():  # a savepoint: the unique name may be taken meanwhile
                    secret = Secret.objects.create(name=name, ciphertext=token, created_by=actor)
            except IntegrityError:
                raise Conflict(
                    f"a secret named {name!r} was stored at the same moment; send it again to "
                    "rotate it",
                    field="name",
                ) from None
            action = "secret.secret.created"
        else:
            secret.ciphertext = token
            secret.rotated_at = timezone.now()
            secret.save(update_fields=["ciphertext", "rotated_at"])
            action = "secret.secret.rotated"
        audit_record(action=action, actor=actor, target=secret, payload={"name": name})
    return secret


def secret_decrypt(*, names: Iterable[str], missing_ok: bool = False) -> dict[str, str]:
    """Decrypt the named secrets. Only `campaigns.secret_grants` calls this: it checks that the
    campaign was granted them and audits the use. Never for display."""
    names = list(names)
    if not names:
        return {}
    fernet = _fernet()
    found = {s.name: s for s in Secret.objects.filter(name__in=names)}
    missing = [n for n in names if n not in found]
    if missing and not missing_ok:
        raise RunFailed(f"secret(s) not stored: {', '.join(missing)}")
    return {n: fernet.decrypt(bytes(found[n].ciphertext)).decode() for n in names if n in found}


def secret_values_seal(values: Mapping[str, str]) -> bytes:
    """{name: value} encrypted as a stored secret is, for a record that must keep the values it
    was made with (a flagged diff's, masked with them after the secret is rotated)."""
    return _fernet().encrypt(json.dumps(dict(values)).encode()) if values else b""


def secret_values_open(token: bytes) -> dict[str, str]:
    """What `secret_values_seal` sealed. Never for display."""
    return json.loads(_fernet().decrypt(bytes(token))) if token else {}
