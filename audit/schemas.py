"""API schemas of the audit trail: events as recorded, verification reports, export requests."""

from ninja import Schema


class AuditEventOut(Schema):
    seq: int | None
    event_id: str
    occurred_at: str
    action: str
    outcome: str
    actor: dict
    target: dict
    context: dict
    reason: str
    changes: dict
    payload: dict


class AuditEventPageOut(Schema):
    items: list[AuditEventOut]
    next_cursor: str


class FindingOut(Schema):
    kind: str
    seq: int | None
    event_id: str
    detail: str


class VerifyOut(Schema):
    ok: bool
    size: int
    checked: int
    checkpoints: int
    checkpoints_valid: int
    key_id: str
    findings: list[FindingOut]


class ExportIn(Schema):
    format: str = "ndjson"
    q: str = ""
