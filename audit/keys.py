"""The Ed25519 key that signs checkpoints. It lives in a file (CONVOY_AUDIT_SIGNING_KEY), never in
the database, so whoever can rewrite the tables still cannot forge a checkpoint."""

import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

logger = logging.getLogger(__name__)


class AuditKeyError(Exception):
    """The signing or verifying key is missing or unreadable."""


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_key_raw(key)).hexdigest()[:16]


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def public_key_load(data: bytes) -> Ed25519PublicKey:
    """A public key from PEM, or from 32 raw bytes written as hex."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(data.decode().strip()))
    except ValueError as exc:
        raise AuditKeyError(f"not an Ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError("not an Ed25519 public key")
    return key


def _generate(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first; use theirs
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    logger.warning(
        "generated a development audit signing key at %s; set CONVOY_AUDIT_SIGNING_KEY to a key "
        "kept outside the database host in production",
        path,
    )


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise AuditKeyError(f"CONVOY_AUDIT_SIGNING_KEY: cannot read {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"CONVOY_AUDIT_SIGNING_KEY: {path} is not an Ed25519 private key")
    return key


def signing_key() -> Ed25519PrivateKey:
    path = Path(settings.AUDIT_SIGNING_KEY)
    if not path.exists():
        _generate(path)
    return _load(str(path), path.stat().st_mtime)


def verifying_key() -> Ed25519PublicKey:
    return signing_key().public_key()


def installation_verifying_key() -> Ed25519PublicKey | None:
    """This installation's public key, or None where it has none yet (verifying must not make
    one: a new key would vouch for nothing)."""
    if not Path(settings.AUDIT_SIGNING_KEY).exists():
        return None
    return verifying_key()
