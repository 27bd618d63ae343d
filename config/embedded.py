"""The embedded shape's in-process Celery worker and beat, started by `manage.py serve`.

Both run on threads of the web server's process, so their death is silent unless someone
looks: `EmbeddedWorker.watch` does, and stops the server with one clear line rather than let
it serve a dashboard whose jobs (run requeues, audit sealing, sandbox reaping) have stopped.
Stopping is bounded: a dead or stuck thread never holds the process up.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from celery.beat import EmbeddedService, PersistentScheduler
from django.conf import settings

from config.celery import app

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 20.0  # for worker and beat together, after which the caller exits anyway
WATCH_EVERY_S = 0.5


class _CrashingScheduler(PersistentScheduler):
    """CONVOY_TEST_CRASH_BEAT: a beat that dies right after it starts, where the real one died
    (before its loop, so celery's own stop would wait for it forever). Tests only: settings
    refuse the variable outside a test run."""

    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError("CONVOY_TEST_CRASH_BEAT: the beat thread crashes on purpose")


@dataclass
class EmbeddedWorker:
    worker: object
    thread: threading.Thread
    beat: EmbeddedService | None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def dead(self) -> str:
        """Why the embedded jobs no longer run ("" while both threads live)."""
        if self._stopping.is_set():
            return ""
        if not self.thread.is_alive():
            return "the embedded Celery worker thread stopped: queued jobs would no longer run"
        if self.beat is not None and not self.beat.is_alive():
            return (
                "the embedded Celery beat thread stopped: scheduled jobs (run requeues, "
                "audit sealing, sandbox reaping) would no longer run"
            )
        return ""

    def watch(self, on_death: Callable[[str], None]) -> threading.Thread:
        """Check both threads every WATCH_EVERY_S; the first time one has died, log why and
        call `on_death(why)` (once). Ends when `stop` is called."""

        def supervise() -> None:
            while not self._stopping.wait(WATCH_EVERY_S):
                why = self.dead()
                if why:
                    logger.error("%s; stopping the server", why)
                    on_death(why)
                    return

        watcher = threading.Thread(target=supervise, name="convoy-embedded-watch", daemon=True)
        watcher.start()
        return watcher

    def stop(self, *, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop beat and worker within `timeout`; False if something was still running then
        (the threads are daemons: the caller may exit regardless)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        # celery's own stop of each waits without a bound (beat's for a flag that a beat that
        # died early never sets): each runs on a helper thread that is joined with a deadline.
        steps: list[tuple[str, Callable[[], None], threading.Thread | None]] = []
        if self.beat is not None:
            beat = self.beat
            steps.append(("beat", lambda: beat.service.stop(wait=False), beat))
        steps.append(("worker", lambda: self.worker.stop(in_sighandler=False), self.thread))
        stopped = True
        for name, stop, thread in steps:
            helper = threading.Thread(target=stop, name=f"convoy-stop-{name}", daemon=True)
            helper.start()
            helper.join(max(0.0, deadline - time.monotonic()))
            if thread is not None and thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
            if helper.is_alive() or (thread is not None and thread.is_alive()):
                logger.warning("the embedded %s did not stop within %.0f s", name, timeout)
                stopped = False
        return stopped


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
        crash = getattr(settings, "TEST_CRASH_BEAT", False)
        beat_service = EmbeddedService(
            app,
            thread=True,
            schedule_filename=str(settings.DATA_DIR / "celerybeat-schedule"),
            **({"scheduler_cls": _CrashingScheduler} if crash else {}),
        )
        beat_service.start()
    logger.info("embedded Celery worker ready (%s threads)", worker.concurrency)
    return EmbeddedWorker(worker=worker, thread=thread, beat=beat_service)
