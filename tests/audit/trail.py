"""Checks a test can make of the audit trail a scenario left behind."""

import json

from audit.models import AuditEvent
from audit.seal import audit_seal
from audit.verify import audit_verify
from tests.support import wait_for

REQUIRED = ("schema", "event_id", "occurred_at", "action", "outcome", "actor", "target", "context")


def trail_seal() -> None:
    """Seal until every committed event is linked (other databases' open transactions on the
    same server can hold the sealer back for a moment)."""
    wait_for(
        lambda: audit_seal().size >= AuditEvent.objects.count(), timeout=60, what="audit sealing"
    )


def assert_trail(actions: list[str], *, after_id: int = 0, verify: bool = True) -> list[dict]:
    """Every action in `actions` appears exactly once after event `after_id`, in this order, each
    event is complete (agents name on whose behalf they acted), and the chain verifies.
    Events of other actions may come in between. Returns the matching bodies.
    With verify=True on PostgreSQL the test needs committed data
    (`@pytest.mark.django_db(transaction=True)`): the sealer only links finished transactions."""
    wanted = set(actions)
    bodies = [
        json.loads(body)
        for body in AuditEvent.objects.filter(id__gt=after_id, action__in=wanted)
        .order_by("id")
        .values_list("body", flat=True)
    ]
    got = [b["action"] for b in bodies]
    assert got == list(actions), f"audit trail: expected {list(actions)}, got {got}"
    for body in bodies:
        missing = [k for k in REQUIRED if k not in body]
        assert not missing, f"{body['action']} lacks {missing}"
        if body["actor"]["type"] == "agent":
            assert body["actor"]["on_behalf_of"], f"{body['action']}: agent without on_behalf_of"
    if verify:
        trail_seal()
        report = audit_verify()
        assert report.ok, [f.line() for f in report.findings]
    return bodies
