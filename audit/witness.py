"""The witness: the sealer's high-water mark, signed and kept outside the database.

Checkpoints live in the database, so someone who can delete the newest events, their links
and the newest checkpoints leaves a shorter trail that verifies. The witness closes that gap:
after every seal the sealer signs {size, head} of the chain and writes it to a file on the
host (CONVOY_DATA_DIR/audit-witness.json, 0600, only ever moved forward). `audit_verify`
reports a "truncated tail" when the chain in the database is shorter than the witness, or
differs from it at the witnessed size. Events newer than the last seal (about a second) are
not covered; copying the file off the host (or exporting bundles) protects against someone
who controls both the database and the host's disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.db import connection

from audit.chain import canonical_json
from audit.keys import key_id, signing_key

WITNESS_SCHEMA = "convoy.audit.witness/1"


@dataclass(frozen=True)
class Witness:
    size: int
    head: str
    time: str
    key_id: str


def witness_path() -> Path:
    return Path(settings.DATA_DIR) / "audit-witness.json"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _raw_read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def witness_read(public_key) -> tuple[Witness | None, str]:
    """(the witness, "") when there is a valid one; (None, why) when it is missing or bad."""
    try:
        raw = _raw_read(witness_path())
    except (OSError, ValueError) as exc:
        return None, f"the witness file cannot be read ({exc})"
    if raw is None:
        return None, "no witness yet"
    try:
        body, signature = raw["body"], bytes.fromhex(raw["signature"])
        public_key.verify(signature, body.encode())
        statement = json.loads(body)
        if statement.get("schema") != WITNESS_SCHEMA:
            raise ValueError("unknown schema")
        return Witness(
            size=int(statement["size"]),
            head=str(statement["head"]),
            time=str(statement["time"]),
            key_id=str(statement["key_id"]),
        ), ""
    except InvalidSignature:
        return None, "the witness's signature does not verify with this key"
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"the witness file is malformed ({exc})"


def witness_advance(*, size: int) -> None:
    """Sign and store the chain's head at `size`, if that is beyond the current witness.
    Called after the sealing transaction committed (never for rows that may roll back)."""
    if size <= 0:
        return
    path = witness_path()
    with _locked(path):
        current = _raw_read(path)
        if current is not None and int(json.loads(current["body"]).get("size", 0)) >= size:
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT chain_hash FROM audit_auditlink WHERE seq = %s", [size])
            row = cursor.fetchone()
        if row is None:
            return
        key = signing_key()
        body = canonical_json(
            {
                "schema": WITNESS_SCHEMA,
                "size": size,
                "head": bytes(row[0]).hex(),
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "key_id": key_id(key.public_key()),
            }
        )
        data = json.dumps({"body": body, "signature": key.sign(body.encode()).hex()})
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)


def witness_forget() -> None:
    """Drop the witness: only for a deliberate wipe of the whole trail (flush in tests)."""
    path = witness_path()
    with _locked(path):
        path.unlink(missing_ok=True)
