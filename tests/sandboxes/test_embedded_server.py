"""`manage.py serve` in the embedded shape, as a real process: it stops on SIGTERM within a
deadline, and when its beat thread dies it says so and exits non-zero instead of serving a
dashboard whose scheduled jobs have stopped.

(Here beside the sandbox engines' hardening tests: the same issue's items, one owner.)
"""

import subprocess
import threading
import time
import urllib.request

import pytest

from config.embedded import embedded_worker_start
from tests.support import PYTHON, ROOT, free_port, process_stop, subprocess_env, wait_for

pytestmark = pytest.mark.shapes("embedded")

DEADLINE_S = 25  # STOP_TIMEOUT_S is 20: a server past it has hung, not merely been slow


def serve(tmp_path, **env) -> tuple[subprocess.Popen, int, object]:
    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [PYTHON, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=subprocess_env(
            CONVOY_DATA_DIR=str(tmp_path / "data"),
            DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
            **env,
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, port, log


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # a page came back (the empty database makes it a 500): it serves
    except OSError:
        return False


def test_a_healthy_server_stops_on_sigterm_within_a_deadline(tmp_path):
    proc, port, log = serve(tmp_path)
    try:
        wait_for(lambda: proc.poll() is not None or answers(port), timeout=60, what="serve")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        started = time.monotonic()
        proc.terminate()
        proc.wait(timeout=DEADLINE_S)
        assert time.monotonic() - started < DEADLINE_S
        assert proc.returncode == 0, (tmp_path / "serve.log").read_text()
    finally:
        process_stop(proc, timeout=5)
        log.close()


def test_a_server_whose_beat_thread_died_exits_with_a_clear_message(tmp_path):
    # PYTEST_VERSION: settings accept the crash hook only inside a test run.
    proc, _, log = serve(tmp_path, CONVOY_TEST_CRASH_BEAT="1", PYTEST_VERSION="test")
    try:
        proc.wait(timeout=60)
        out = (tmp_path / "serve.log").read_text()
        assert proc.returncode not in (0, None), out
        assert "the embedded Celery beat thread stopped" in out
        assert "CommandError" in out and "the server stopped" in out
    finally:
        process_stop(proc, timeout=5)
        log.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_stopping_is_bounded_when_the_beat_died_before_its_loop(settings):
    """celery's own beat stop waits forever for a beat that died this early."""
    settings.TEST_CRASH_BEAT = True
    worker = embedded_worker_start(concurrency=1)
    wait_for(worker.dead, timeout=15, what="the beat thread to die")
    assert "beat thread stopped" in worker.dead()
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 5}, daemon=True)
    stopper.start()
    stopper.join(timeout=DEADLINE_S)
    assert not stopper.is_alive(), "the embedded worker's stop hung"
    assert not worker.thread.is_alive()
