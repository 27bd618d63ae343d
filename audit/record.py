"""Recording: `audit_record` writes one event in the caller's transaction; `audit_denied` records a
refusal. (The writing code itself is still in audit/services.py; this is the name callers use.)"""

from audit.services import AuditWriteError, audit_denied, audit_record

__all__ = ["AuditWriteError", "audit_denied", "audit_record"]
