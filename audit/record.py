"""TEMPORARY shim while audit/services.py is split (the audit helper replaces this file)."""

from audit.services import AuditWriteError, audit_record


def audit_denied(*, actor, capability: str, target=None, path: str = "") -> None:
    """Record a refused attempt. It commits even though the request itself fails."""
    audit_record(
        action="people.permission.denied",
        actor=actor,
        outcome="denied",
        target=target,
        payload={"capability": capability, "path": path},
    )


__all__ = ["AuditWriteError", "audit_denied", "audit_record"]
