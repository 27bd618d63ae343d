"""Periodic sandbox work (the reaper: a thin caller of `sandboxes_reap`, safe to rerun), and a
pool process's start and end (its engines made, its spare cgroups dropped)."""

import logging

from celery import shared_task
from celery.signals import worker_process_init, worker_process_shutdown

from sandboxes.backends import cgroups
from sandboxes.reaper import sandboxes_reap
from sandboxes.services import backends_warm

log = logging.getLogger(__name__)


@shared_task(name="sandboxes.reap")
def sandboxes_reap_task() -> int:
    reaped = sandboxes_reap()
    if reaped:
        log.info("reaped %d sandboxes: %s", len(reaped), [s.pk for s in reaped])
    return len(reaped)


@worker_process_init.connect
def _engines_warm(**_kwargs) -> None:
    """A pool process makes its engines when it starts, not during the first run it carries
    (bwrap and gVisor together: about 0.15 s of CPU and 0.4 s of wall per process)."""
    backends_warm()


@worker_process_shutdown.connect
def _spares_drop(**_kwargs) -> None:
    """A prefork pool process leaves with os._exit (no atexit): drop its spare cgroups now."""
    cgroups.spares_drop()
