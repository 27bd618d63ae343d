"""A run's lease heartbeat: a thread that keeps the run's lease fresh while a worker carries
it, and notices when the run was cancelled or taken away (moved out of campaigns.pipeline)."""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import connection
from django.utils import timezone

from campaigns.models import RepoRun, RunState

logger = logging.getLogger(__name__)


class RunHeartbeat(threading.Thread):
    """Keeps the run's lease fresh; notices when the run was cancelled or taken away."""

    def __init__(self, run_id: int, worker: str) -> None:
        super().__init__(daemon=True, name=f"run-{run_id}-heartbeat")
        self.run_id, self.worker = run_id, worker
        self.stop_event = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        interval = max(0.5, settings.RUN_LEASE_S / 3)
        try:
            while not self.stop_event.wait(interval):
                alive = RepoRun.objects.filter(
                    pk=self.run_id, state=RunState.RUNNING, worker=self.worker
                ).update(heartbeat_at=timezone.now())
                if not alive:
                    self.lost.set()
                    return
        except Exception:
            logger.exception("heartbeat for run %s failed", self.run_id)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
