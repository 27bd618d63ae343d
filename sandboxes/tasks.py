"""Periodic sandbox work: the reaper. A thin caller of `sandboxes_reap`; safe to rerun."""

import logging

from celery import shared_task

from sandboxes.services import sandboxes_reap

log = logging.getLogger(__name__)


@shared_task(name="sandboxes.reap")
def sandboxes_reap_task() -> int:
    reaped = sandboxes_reap()
    if reaped:
        log.info("reaped %d sandboxes: %s", len(reaped), [s.pk for s in reaped])
    return len(reaped)
