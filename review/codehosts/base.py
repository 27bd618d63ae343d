"""The code-host adapter interface and the pacing shared by every campaign using one host.

An adapter opens or updates the pull request for a pushed branch and reports its state and
checks. Calls to one host with one credential share a pace (a token bucket) and a "blocked
until" time set by `Retry-After` or rate-limit reset headers, so one campaign hitting a limit
slows every campaign using that credential rather than each discovering it alone.
"""

from __future__ import annotations

import hashlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings

from sandboxes.pacing import bucket_get


class CodeHostError(Exception):
    """A code-host call failed; `transient` errors are worth retrying later."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


class ChecksState:
    NONE = "none"
    PENDING = "pending"
    PASSING = "passing"
    FAILING = "failing"


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    state: str  # draft, open, merged, closed
    head_sha: str = ""


class HostPacer:
    """Pace for one host and credential: a token bucket plus a shared blocked-until time."""

    def __init__(
        self,
        *,
        host: str,
        credential: str,
        rate: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        digest = hashlib.sha256(credential.encode()).hexdigest()[:16]
        self.name = f"codehost:{host}:{digest}"
        self.bucket = bucket_get(name=self.name, rate=rate, burst=max(rate, 1.0))
        self._sleep = sleep
        self._clock = clock

    # Blocked-until lives beside the bucket: Redis when there is one, else this process.
    _local: dict[str, float] = {}
    _local_lock = threading.Lock()

    def _redis(self):
        if not settings.REDIS_URL:
            return None
        return redis.Redis.from_url(settings.REDIS_URL)

    def _key(self) -> str:
        return f"{settings.REDIS_PREFIX}:pace:{self.name}:blocked"

    def blocked_until(self) -> float:
        client = self._redis()
        if client is None:
            with self._local_lock:
                return self._local.get(self.name, 0.0)
        raw = client.get(self._key())
        return float(raw) if raw else 0.0

    def block(self, seconds: float) -> None:
        """Nobody using this host and credential calls again for `seconds`."""
        until = self._clock() + max(0.0, seconds)
        client = self._redis()
        if client is None:
            with self._local_lock:
                self._local[self.name] = max(self._local.get(self.name, 0.0), until)
            return
        # Keep the later of the stored and the new time.
        current = client.get(self._key())
        if current is None or float(current) < until:
            client.set(self._key(), repr(until), px=int(max(seconds, 0.001) * 1000) + 1000)

    def wait(self) -> float:
        """Sleep until this caller may call the host; returns the seconds waited."""
        waited = 0.0
        remaining = self.blocked_until() - self._clock()
        if remaining > 0:
            self._sleep(remaining)
            waited += remaining
        waited += self.bucket.acquire()
        return waited


class CodeHost(ABC):
    """One code host (GitHub, …) reached with one credential."""

    name: str
    token: str = ""  # also sent with git pushes to this host's https remotes

    @abstractmethod
    def pull_request_upsert(
        self, *, repo: str, head: str, base: str, title: str, body: str, draft: bool = False
    ) -> PullRequest:
        """Open a pull request for `head` into `base`, or update the open one."""

    @abstractmethod
    def pull_request_get(self, *, repo: str, number: int) -> PullRequest: ...

    @abstractmethod
    def checks_get(self, *, repo: str, ref: str) -> str:
        """A `ChecksState` for the commit `ref`: check runs and commit statuses combined."""
