"""Stored secrets: encrypted at rest, written by admins; `campaigns.secret_grants` decides which
campaigns' sandboxes receive them."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from audit.record import audit_record
from campaigns.models import (
    Secret,
)
from campaigns.states import RunFailed
from core.crypto import secrets_fernet
from core.errors import Invalid

_fernet = secrets_fernet  # the key is shared with model providers' keys (core.crypto)


SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def secret_set(*, name: str, value: str, actor) -> Secret:
    """Store or rotate a secret. The value is encrypted and can never be read back by people."""
    if not SECRET_NAME_RE.match(name or ""):
        raise Invalid("use letters, digits and '_' (an environment variable name)", field="name")
    if not value:
        raise Invalid("must not be empty", field="value")
    token = _fernet().encrypt(value.encode())
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(name=name).first()
        if secret is None:
            secret = Secret.objects.create(name=name, ciphertext=token, created_by=actor)
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
