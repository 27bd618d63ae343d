"""Periodic sandbox work: the reaper. A thin caller of `sandboxes_reap`; safe to rerun."""

import logging

from celery import shared_task
from celery.signals import worker_process_shutdown

from sandboxes.backends import cgroups
from sandboxes.reaper import sandboxes_reap

log = logging.getLogger(__name__)


@shared_task(name="sandboxes.reap")
def sandboxes_reap_task() -> int:
    reaped = sandboxes_reap()
    if reaped:
        log.info("reaped %d sandboxes: %s", len(reaped), [s.pk for s in reaped])
    return len(reaped)


@worker_process_shutdown.connect
def _spares_drop(**_kwargs) -> None:
    """A prefork pool process leaves with os._exit (no atexit): drop its spare cgroups now."""
    cgroups.spares_drop()
