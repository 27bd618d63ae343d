"""The embedded shape's in-process Celery worker and beat, started by `manage.py serve`."""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass

from celery.beat import EmbeddedService
from django.conf import settings

from config.celery import app

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedWorker:
    worker: object
    thread: threading.Thread
    beat: EmbeddedService | None

    def stop(self) -> None:
        if self.beat is not None:
            self.beat.stop()
        self.worker.stop(in_sighandler=False)
        self.thread.join(timeout=30)


def embedded_worker_start(*, concurrency: int | None = None, beat: bool = True) -> EmbeddedWorker:
    """Start a Celery worker (threads pool, memory transport) inside this process."""
    ready = threading.Event()
    worker = app.WorkController(
        pool_cls="threads",
        concurrency=concurrency or settings.CONVOY_WORKER_CONCURRENCY,
        hostname=f"embedded-{threading.get_ident()}@{socket.gethostname()}",
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        ready_callback=lambda consumer: ready.set(),
    )
    thread = threading.Thread(target=worker.start, name="convoy-embedded-worker", daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("the embedded Celery worker did not start within 30 s")
    beat_service = None
    if beat and settings.CELERY_BEAT_SCHEDULE:
        beat_service = EmbeddedService(
            app, thread=True, schedule_filename=str(settings.DATA_DIR / "celerybeat-schedule")
        )
        beat_service.start()
    logger.info("embedded Celery worker ready (%s threads)", worker.concurrency)
    return EmbeddedWorker(worker=worker, thread=thread, beat=beat_service)
