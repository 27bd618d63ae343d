"""Reading the audit trail: GitHub-style filter parsing and the event queries built from it."""

import json
import shlex
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Q, QuerySet

from audit.models import AuditCheckpoint, AuditEvent, AuditLink
from audit.record import OUTCOMES
from core.errors import Invalid, NotFound
from core.text import text_problem

FILTER_KEYS = (
    "action",
    "actor",
    "on_behalf_of",
    "outcome",
    "target",
    "campaign",
    "run",
    "variant",
    "sandbox",
    "created",
)
PAGE_SIZE = 50
BIGINT_MAX = 2**63 - 1


class AuditFilterError(Invalid):
    """A filter the user typed that cannot be applied; `field` is the query parameter (`q`,
    `cursor`, `limit`)."""

    def __init__(self, message: str, field: str = "q") -> None:
        super().__init__(message, field=field, code="invalid_filter")


def _moment(text: str, *, end: bool) -> datetime:
    """A date (whole day) or an ISO 8601 time; naive values are UTC."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time.min, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):  # OverflowError: the day after 9999-12-31
        raise AuditFilterError(
            f"created: {text!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM:SS)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _created(value: str) -> Q:
    if ".." in value:
        lo, hi = value.split("..", 1)
        q = Q()
        if lo and lo != "*":
            q &= Q(occurred_at__gte=_moment(lo, end=False))
        if hi and hi != "*":
            q &= Q(occurred_at__lt=_moment(hi, end=True))
        return q
    for op, lookup, end in (
        (">=", "gte", False),
        ("<=", "lt", True),
        (">", "gte", True),
        ("<", "lt", False),
    ):
        if value.startswith(op):
            return Q(**{f"occurred_at__{lookup}": _moment(value[len(op) :], end=end)})
    return Q(occurred_at__gte=_moment(value, end=False), occurred_at__lt=_moment(value, end=True))


def _number(key: str, value: str, *, field: str = "q") -> int:
    """An id to compare with a bigint column: a number the database takes, or a refusal
    naming `field` (the query parameter: `q` for a filter term)."""
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or int(value) > BIGINT_MAX:
        raise AuditFilterError(f"{key}: expected a number, got {value!r}", field=field)
    return int(value)


def _term(key: str, value: str) -> Q:
    if not value:
        raise AuditFilterError(f"{key}: needs a value, as in {key}:something")
    if key == "action":
        return Q(action__startswith=value[:-1]) if value.endswith("*") else Q(action=value)
    if key == "actor":
        return Q(actor_display=value) | Q(actor_id=value) | Q(actor_type=value)
    if key == "on_behalf_of":
        return Q(on_behalf_of=value)
    if key == "outcome":
        if value not in OUTCOMES:
            raise AuditFilterError(f"outcome: {value!r} is not one of {', '.join(OUTCOMES)}")
        return Q(outcome=value)
    if key == "target":
        kind, _, ident = value.partition(":")
        return Q(target_type=kind) & (Q(target_id=ident) if ident else Q())
    if key == "created":
        return _created(value)
    return Q(**{f"{key}_id": _number(key, value)})


@dataclass(frozen=True)
class AuditQuery:
    text: str
    q: Q

    def events(self) -> QuerySet:
        return AuditEvent.objects.filter(self.q)


def audit_query_parse(*, text: str) -> AuditQuery:
    """`action:sandbox.exec.* actor:alice campaign:42 created:>=2026-01-01 "free text"`."""
    if problem := text_problem(text or ""):
        raise AuditFilterError(problem)
    try:
        tokens = shlex.split(text or "")
    except ValueError as exc:
        raise AuditFilterError(f"cannot read the filter: {exc}") from None
    q = Q()
    for token in tokens:
        key, sep, value = token.partition(":")
        if sep and key.isidentifier():
            if key not in FILTER_KEYS:
                raise AuditFilterError(
                    f"unknown filter {key!r}; use one of {', '.join(FILTER_KEYS)}"
                )
            q &= _term(key, value)
        else:
            q &= Q(body__icontains=token)
    return AuditQuery(text=text or "", q=q)


@dataclass(frozen=True)
class EventPage:
    events: list[AuditEvent]
    next_cursor: str


def audit_events_page(
    *, query: AuditQuery, cursor: str = "", limit: int = PAGE_SIZE, extra: Q | None = None
) -> EventPage:
    """Newest first; the cursor is the id to continue below (opaque to callers)."""
    qs = query.events().select_related("link").order_by("-id")
    if extra is not None:
        qs = qs.filter(extra)
    if cursor:
        qs = qs.filter(id__lt=_number("cursor", cursor, field="cursor"))
    if not 1 <= limit <= 500:
        raise AuditFilterError("limit: must be between 1 and 500", field="limit")
    events = list(qs[: limit + 1])
    more = len(events) > limit
    events = events[:limit]
    return EventPage(events=events, next_cursor=str(events[-1].pk) if more else "")


def event_seq(event: AuditEvent) -> int | None:
    try:
        return event.link.seq
    except AuditLink.DoesNotExist:
        return None


def event_as_dict(event: AuditEvent) -> dict:
    return {"seq": event_seq(event), **json.loads(event.body)}


def audit_event_get(*, event_id) -> AuditEvent:
    event = AuditEvent.objects.select_related("link").filter(event_id=event_id).first()
    if event is None:
        raise NotFound("No audit event with this id.")
    return event


def audit_seal_status() -> dict:
    """What the verification page shows before anyone verifies: the last checkpoint, how many
    events there are and how many are not linked into the chain yet."""
    return {
        "checkpoint": AuditCheckpoint.objects.order_by("-number").first(),
        "events": AuditEvent.objects.count(),
        "unsealed": AuditEvent.objects.filter(link__isnull=True).count(),
    }
