"""Export: the sealed trail as a verifiable NDJSON bundle, filtered events as CSV, bundle checks."""

import csv
import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from django.db.models import QuerySet

from audit.keys import (
    AuditKeyError,
    key_id,
    public_key_load,
    public_key_pem,
    public_key_raw,
    verifying_key,
)
from audit.record import audit_record, canonical_json
from audit.seal import BUNDLE_SCHEMA
from audit.verify import checkpoint_rows, links_stream
from audit.walk import (
    CheckpointRow,
    Finding,
    Report,
    batched,
    chain_walk,
    checkpoints_check,
)

logger = logging.getLogger(__name__)

OTHER_KEY = "other key"  # a bundle's header names another key than the one trusted


# --- Export -----------------------------------------------------------------------------------
def audit_export_record(*, actor, fmt: str, query: str = "") -> None:
    audit_record(
        action="audit.events.exported",
        actor=actor,
        payload={"format": fmt, "query": query},
    )


def bundle_lines() -> Iterator[str]:
    """The whole sealed trail as NDJSON: a header with the public key, the signed checkpoints,
    then every link with its event's stored body (as a JSON string, so its bytes survive)."""
    key = verifying_key()
    yield (
        canonical_json(
            {
                "type": "header",
                "schema": BUNDLE_SCHEMA,
                "exported_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "key_id": key_id(key),
                "public_key": public_key_raw(key).hex(),
                "public_key_pem": public_key_pem(key),
            }
        )
        + "\n"
    )
    for row in checkpoint_rows(None):
        yield (
            canonical_json(
                {
                    "type": "checkpoint",
                    "number": row.number,
                    "size": row.size,
                    "body": row.body,
                    "signature": row.signature,
                    "frontier": row.frontier,
                }
            )
            + "\n"
        )
    for seq, event_uuid, content, chained, body, _key in links_stream(0):
        yield (
            canonical_json(
                {
                    "type": "event",
                    "seq": seq,
                    "event_id": str(uuid.UUID(str(event_uuid))),
                    "content_hash": bytes(content).hex(),
                    "chain_hash": bytes(chained).hex(),
                    "body": body,
                }
            )
            + "\n"
        )


def audit_verify_bundle(*, lines, public_key=None) -> Report:
    """Verify an exported bundle offline against `public_key`, the auditor's own copy of the
    exporting installation's key. None trusts the key inside the bundle, which proves only
    that the bundle is self-consistent: anyone can re-sign a bundle with a key of their own.
    A bundle naming another key than the trusted one is a finding of its own."""
    header, rows, events = None, [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            kind = item["type"]
            if kind == "header":
                header = item
            elif kind == "checkpoint":
                if not all(isinstance(item[k], str) for k in ("body", "signature")):
                    raise TypeError("body and signature must be strings")
                rows.append(
                    CheckpointRow(
                        int(item["number"]),
                        int(item["size"]),
                        item["body"],
                        item["signature"],
                        list(item["frontier"]),
                    )
                )
            elif kind == "event":
                if not isinstance(item["body"], str):
                    raise TypeError("body must be a string")
                events.append(
                    (
                        int(item["seq"]),
                        str(item["event_id"]),
                        bytes.fromhex(item["content_hash"]),
                        bytes.fromhex(item["chain_hash"]),
                        item["body"].encode(),
                        None,
                    )
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"bundle line {number}: not a bundle record ({exc})") from exc
    if header is None:
        raise ValueError("bundle: no header line (is this an audit bundle?)")
    try:
        named = public_key_load(str(header.get("public_key", "")).encode())
    except AuditKeyError as exc:
        raise ValueError(f"bundle header: public_key: {exc}") from exc
    report = Report(key_id=key_id(public_key or named))
    if public_key is not None and public_key_raw(named) != public_key_raw(public_key):
        report.findings.append(
            Finding(
                OTHER_KEY,
                None,
                "",
                f"the bundle names key {key_id(named)}, not the trusted key {key_id(public_key)}",
            )
        )
    public_key = public_key or named
    signed = checkpoints_check(rows, public_key, report)
    chain_walk(batched(events), signed, report)
    return report


CSV_COLUMNS = (
    "event_id",
    "occurred_at",
    "action",
    "outcome",
    "actor_type",
    "actor",
    "on_behalf_of",
    "actor_ip",
    "target_type",
    "target_id",
    "campaign_id",
    "sandbox_id",
    "request_id",
    "body",
)


# A spreadsheet runs a cell starting with one of these as a formula (OWASP's list). Every
# cell is also quoted: in a locale whose separator is `;`, `x;=…` unquoted became two cells.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _csv_cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.lstrip(" ")[:1] in _FORMULA_START else text


def csv_lines(events: QuerySet) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)

    def flush() -> str:
        value = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return value

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for event in events.iterator(chunk_size=2000):
        body = json.loads(event.body)
        writer.writerow(
            [
                _csv_cell(v)
                for v in (
                    event.event_id,
                    body["occurred_at"],
                    event.action,
                    event.outcome,
                    event.actor_type,
                    event.actor_display,
                    event.on_behalf_of,
                    body["actor"].get("ip", ""),
                    event.target_type,
                    event.target_id,
                    event.campaign_id,
                    event.sandbox_id,
                    body["context"].get("request_id", ""),
                    event.body,
                )
            ]
        )
        yield flush()
