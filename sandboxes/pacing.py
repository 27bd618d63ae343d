"""Token buckets that pace calls to rate-limited providers (Modal creates, code-host APIs).

A caller reserves a slot with `acquire()` and sleeps until its slot comes; reserving ahead
(tokens may go negative) keeps one round trip per call and serves callers in arrival order.
With REDIS_URL set the bucket lives in Redis, so every worker process shares one pace;
without it (the embedded shape) it lives in this process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from django.conf import settings


class TokenBucket:
    """`rate` tokens per second, up to `burst` saved; in-process state."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp: float | None = None

    def reserve(self) -> float:
        """Take one token now and return how many seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            if self._stamp is None:
                self._stamp = now
            elif now > self._stamp:
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
            self._tokens -= 1.0
            return max(0.0, -self._tokens / self.rate)

    def acquire(self) -> float:
        """Block until this caller may go; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait


# The same reservation as TokenBucket.reserve, done atomically inside Redis. The caller passes
# its wall clock (`now`) so every process measures time alike; a clock behind the stored stamp
# never refills twice. Floats travel as strings because Lua numbers come back as integers.
_RESERVE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
if now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) * rate)
  stamp = now
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(stamp))
local idle = math.ceil((burst - tokens) / rate) + 60
redis.call('EXPIRE', KEYS[1], idle)
if tokens >= 0 then
  return '0'
end
return tostring(-tokens / rate)
"""


class RedisTokenBucket(TokenBucket):
    """A TokenBucket whose state is one Redis hash shared by every process using `key`."""

    def __init__(
        self,
        *,
        key: str,
        rate: float,
        burst: float | None = None,
        redis_url: str | None = None,
        client=None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(rate=rate, burst=burst, clock=clock, sleep=sleep)
        if client is None:
            client = redis.Redis.from_url(redis_url or settings.REDIS_URL)
        self.key = key
        self._client = client
        self._script = client.register_script(_RESERVE_LUA)

    def reserve(self) -> float:
        raw = self._script(keys=[self.key], args=[self.rate, self.burst, repr(self._clock())])
        return float(raw)


_buckets: dict[str, TokenBucket] = {}
_buckets_lock = threading.Lock()


def bucket_get(*, name: str, rate: float, burst: float | None = None) -> TokenBucket:
    """The bucket called `name` for this installation: in Redis when REDIS_URL is set."""
    with _buckets_lock:
        bucket = _buckets.get(name)
        if bucket is None or bucket.rate != float(rate):
            if settings.REDIS_URL:
                bucket = RedisTokenBucket(
                    key=f"{settings.REDIS_PREFIX}:pace:{name}", rate=rate, burst=burst
                )
            else:
                bucket = TokenBucket(rate=rate, burst=burst)
            _buckets[name] = bucket
        return bucket
