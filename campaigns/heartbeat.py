"""Run leases: while a worker process carries runs, one thread of that process keeps their
leases fresh (one UPDATE for all of them) and notices a run that was cancelled or taken away
(moved out of campaigns.pipeline).

One thread per process, not one per run: starting and joining a thread for every run put two
thread hand-offs on each run's path, and runs carried one after another share the thread.
"""

from __future__ import annotations

import logging
import os
import threading

from django.conf import settings
from django.db import connection
from django.utils import timezone

from campaigns.models import RepoRun, RunState

logger = logging.getLogger(__name__)


class RunHeartbeat:
    """One run's lease, kept fresh by the process's lease thread; `lost` is set when the run
    is no longer running for this worker (cancelled, or requeued and claimed elsewhere)."""

    def __init__(self, run_id: int, worker: str) -> None:
        self.run_id, self.worker = run_id, worker
        self.lost = threading.Event()

    def start(self) -> None:
        _leases().add(self)

    def stop(self) -> None:
        _leases().discard(self)


class _Leases:
    """The process's lease thread and the leases it keeps."""

    def __init__(self) -> None:
        self._held: set[RunHeartbeat] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def add(self, lease: RunHeartbeat) -> None:
        with self._lock:
            self._held.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="run-leases")
                self._thread.start()

    def discard(self, lease: RunHeartbeat) -> None:
        with self._lock:
            self._held.discard(lease)

    def _run(self) -> None:
        interval = max(0.5, settings.RUN_LEASE_S / 3)
        while True:
            with self._lock:
                self._wake.wait(interval)
                held = list(self._held)
                if not held:  # nothing to keep: the thread ends (a new lease starts one)
                    self._thread = None
                    return
            try:
                self._refresh(held)
            except Exception:  # the next round tries again; a lease outlives a few misses
                logger.exception(
                    "could not refresh the leases of runs %s", [h.run_id for h in held]
                )
            finally:
                connection.close()  # a refresh every few seconds: no idle connection kept

    def _refresh(self, held: list[RunHeartbeat]) -> None:
        by_worker: dict[str, list[RunHeartbeat]] = {}
        for lease in held:
            by_worker.setdefault(lease.worker, []).append(lease)
        table = RepoRun._meta.db_table
        for worker, leases in by_worker.items():
            ids = [lease.run_id for lease in leases]
            marks = ", ".join(["%s"] * len(ids))
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {table} SET heartbeat_at = %s "  # noqa: S608 (our table name)
                    f"WHERE id IN ({marks}) AND state = %s AND worker = %s RETURNING id",
                    [timezone.now(), *ids, RunState.RUNNING, worker],
                )
                alive = {row[0] for row in cursor.fetchall()}
            for lease in leases:
                if lease.run_id not in alive:
                    lease.lost.set()
                    self.discard(lease)


_process_leases: tuple[int, _Leases] | None = None
_process_lock = threading.Lock()


def _leases() -> _Leases:
    """This process's leases (a forked pool process starts its own: threads do not survive a
    fork)."""
    global _process_leases
    with _process_lock:
        if _process_leases is None or _process_leases[0] != os.getpid():
            _process_leases = (os.getpid(), _Leases())
        return _process_leases[1]
