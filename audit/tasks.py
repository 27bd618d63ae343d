"""The sealer as a periodic task (see CELERY_BEAT_SCHEDULE)."""

from celery import shared_task

from audit.seal import audit_seal


@shared_task(ignore_result=True)
def audit_seal_task() -> int:
    # Skip rather than queue up behind a sealer that is still running: the next tick catches up.
    return audit_seal(wait=False).linked
