"""The one key that encrypts stored secrets (campaign secrets, model provider keys) at rest."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def secrets_fernet() -> Fernet:
    """A Fernet for CONVOY_SECRETS_KEY (or, outside production, a key file in DATA_DIR)."""
    key = settings.SECRETS_KEY
    if not key:
        if not (settings.EMBEDDED or settings.DEBUG or settings.TESTING):
            raise ImproperlyConfigured(
                "CONVOY_SECRETS_KEY: required to store secrets in the production shape "
                "(generate one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            )
        path = Path(settings.DATA_DIR) / "secrets.key"
        if not path.exists():
            path.write_bytes(Fernet.generate_key())
            path.chmod(0o600)
        key = path.read_text().strip()
    try:
        return Fernet(key.encode() if isinstance(key, str) else key)
    except ValueError as exc:
        raise ImproperlyConfigured(f"CONVOY_SECRETS_KEY: not a valid Fernet key ({exc})") from None
