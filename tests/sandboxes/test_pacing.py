"""Token buckets pace calls to rate-limited providers; in Redis they pace every process at once.

Time is a fake clock here: the assertions are about which caller waits how long, not timings.
"""

import subprocess
import threading

import pytest
from django.conf import settings

from sandboxes.pacing import RedisTokenBucket, TokenBucket, bucket_get
from tests.support import PYTHON, ROOT, subprocess_env


class FrozenClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.shapes("embedded", "production")
def test_bucket_allows_a_burst_then_one_call_per_interval():
    clock = FrozenClock()
    bucket = TokenBucket(rate=4, burst=2, clock=clock)
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.25, 0.5]
    clock.now += 1.0  # a second later the debt is paid and the burst is saved again
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.25]


@pytest.mark.shapes("embedded", "production")
def test_bucket_refills_no_more_than_its_burst():
    clock = FrozenClock()
    bucket = TokenBucket(rate=1, burst=3, clock=clock)
    clock.now += 3600
    assert [bucket.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]


@pytest.mark.shapes("embedded", "production")
def test_bucket_acquire_sleeps_for_its_reservation():
    clock = FrozenClock()
    slept: list[float] = []
    bucket = TokenBucket(rate=2, burst=1, clock=clock, sleep=slept.append)
    for _ in range(3):
        bucket.acquire()
    assert slept == [0.5, 1.0]


@pytest.mark.shapes("embedded", "production")
def test_bucket_serves_concurrent_callers_one_slot_each():
    bucket = TokenBucket(rate=10, burst=1, clock=FrozenClock())
    waits: list[float] = []
    lock = threading.Lock()

    def take():
        wait = bucket.reserve()
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([n / 10 for n in range(20)])


@pytest.mark.shapes("embedded")
def test_embedded_bucket_lives_in_this_process():
    bucket = bucket_get(name="test-embedded", rate=3)
    assert type(bucket) is TokenBucket
    assert bucket_get(name="test-embedded", rate=3) is bucket


@pytest.fixture
def redis_key():
    import redis

    key = f"{settings.REDIS_PREFIX}:pace:test-{threading.get_ident()}"
    yield key
    redis.Redis.from_url(settings.REDIS_URL).delete(key)


def test_production_bucket_is_shared_through_redis(redis_key):
    assert type(bucket_get(name="test-production", rate=3)) is RedisTokenBucket
    clock = FrozenClock()
    # Two workers' buckets with the same key draw from one pace.
    first = RedisTokenBucket(key=redis_key, rate=2, burst=1, clock=clock)
    second = RedisTokenBucket(key=redis_key, rate=2, burst=1, clock=clock)
    assert [first.reserve(), second.reserve(), first.reserve()] == [0.0, 0.5, 1.0]
    clock.now += 10
    assert second.reserve() == 0.0


def test_production_bucket_paces_another_process(redis_key):
    clock = FrozenClock(now=5000.0)
    bucket = RedisTokenBucket(key=redis_key, rate=1, burst=1, clock=clock)
    assert bucket.reserve() == 0.0
    code = (
        "import django; django.setup()\n"
        "from sandboxes.pacing import RedisTokenBucket\n"
        f"b = RedisTokenBucket(key={redis_key!r}, rate=1, burst=1, clock=lambda: 5000.0)\n"
        "print(b.reserve())\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", code],
        cwd=ROOT,
        env=subprocess_env(DJANGO_SETTINGS_MODULE="config.settings"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert float(out.stdout.strip()) == 1.0  # the other process waits for our token
    assert bucket.reserve() == 2.0
