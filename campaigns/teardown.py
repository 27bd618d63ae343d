"""Sandbox teardown off a run's critical path: a finished variant's sandbox is terminated by one
background thread per worker process while the run records its result and the next run starts.

The run's final state does not wait for the teardown; the campaign's does: the last run a worker
carries waits for its process's teardowns before the campaign may complete. A worker that dies
with a teardown pending leaves a live sandbox whose owner is final: the reaper terminates it
(`sandboxes.reaper`), and the engine's orphan sweep clears what no record names.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
from collections.abc import Callable

from django.db import connection

from sandboxes.services import sandbox_terminate

logger = logging.getLogger(__name__)

IDLE_CLOSE_S = 1.0  # an idle thread closes its database connection (it holds no lock)


def sandbox_terminate_logged(sandbox, reason: str) -> None:
    """Terminate now; a failure is logged, not raised (the reaper retries it). The instance is
    the run's own (`fresh`): its record is not read again first."""
    try:
        sandbox_terminate(sandbox=sandbox, reason=reason, fresh=True)
    except Exception:
        logger.exception("could not terminate sandbox %s", sandbox.pk)


class _Teardowns:
    """One daemon thread and its queue, made on first use in each process (a prefork pool
    forks after import: threads do not survive a fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: queue.Queue = queue.Queue()
        self.pending: set[int] = set()  # sandboxes queued or being terminated
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="convoy-teardown", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                pk, job = self.jobs.get(timeout=IDLE_CLOSE_S)
            except queue.Empty:
                connection.close()
                pk, job = self.jobs.get()
            try:
                job()
            except Exception:
                logger.exception("teardown job %s failed", job)
            finally:
                with self.lock:
                    self.pending.discard(pk)
                self.jobs.task_done()


_teardowns: _Teardowns | None = None
_lock = threading.Lock()


def _current() -> _Teardowns:
    global _teardowns
    with _lock:
        if _teardowns is None or _teardowns.pid != os.getpid():
            _teardowns = _Teardowns()
        return _teardowns


def sandbox_terminate_soon(sandbox, reason: str) -> None:
    """Terminate in the background (the `sandbox.terminated` event is written then, as ever)."""
    current = _current()
    with current.lock:
        current.pending.add(sandbox.pk)
    current.jobs.put((sandbox.pk, functools.partial(sandbox_terminate_logged, sandbox, reason)))


def after_teardowns(job: Callable[[], None]) -> None:
    """Call `job` on the teardown thread once the teardowns queued before it are done (a
    snapshot is deleted after the forks made from it are terminated)."""
    _current().jobs.put((None, job))


def teardowns_pending() -> set[int]:
    """Ids of the sandboxes this process's teardown thread has yet to terminate: a run's
    cleanup leaves them to it rather than terminating them again on the run's path."""
    current = _teardowns
    if current is None or current.pid != os.getpid():
        return set()
    with current.lock:
        return set(current.pending)


def teardowns_wait() -> None:
    """Return once every teardown this process queued is done."""
    current = _teardowns
    if current is not None and current.pid == os.getpid():
        current.jobs.join()
