"""Shared fixtures: role users, real Celery workers, a real ASGI server, real Chromium.

Tests run in one deployment shape per pytest invocation (decided by REDIS_URL, as in
production). `@pytest.mark.shapes("embedded", "production")` says where a test belongs;
unmarked tests belong to the production shape. Tests of the other shape are deselected,
not skipped.
"""

import subprocess
import threading
from pathlib import Path

import pytest
from django.conf import settings

from tests.factories import user_make
from tests.support import PYTHON, ROOT, free_port, process_stop, subprocess_env, wait_for

ARTIFACTS = ROOT / "test-artifacts"


def pytest_report_header(config):
    db = settings.DATABASES["default"]
    engine = "SQLite" if db["ENGINE"].endswith("sqlite3") else "PostgreSQL"
    redis = (
        f"Redis {settings.REDIS_URL} prefix {settings.REDIS_PREFIX}"
        if settings.REDIS_URL
        else ("no Redis: memory broker, in-memory channel layer")
    )
    return f"convoy shape: {settings.SHAPE} ({engine} {db['TEST']['NAME']}; {redis})"


# End-to-end tests (a real worker, a real server or a real browser) are `slow`:
# `make test-fast` skips them for the inner loop; `make test` runs everything.
SLOW_FIXTURES = {"celery_worker", "asgi_server", "browser_page"}


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        marker = item.get_closest_marker("shapes")
        shapes = marker.args if marker else ("production",)
        (keep if settings.SHAPE in shapes else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def _test_database_released(django_db_setup, django_db_blocker):
    """Let pytest-django drop this run's database: end sessions that threads or killed
    subprocesses may have left open on it."""
    yield
    from sandboxes.logs import log_writers_close

    log_writers_close()
    with django_db_blocker.unblock():
        from django.db import connection

        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture
def manager(db):
    return user_make(role="manager", username="mia")


@pytest.fixture
def reviewer(db):
    return user_make(role="reviewer", username="rob")


@pytest.fixture
def admin_user(db):
    return user_make(role="admin", username="ada")


@pytest.fixture
def outsider(db):
    return user_make(role=None, username="otto")


@pytest.fixture
def celery_worker(transactional_db):
    """A real worker: a `celery worker` process in production, in-process when embedded."""
    if settings.EMBEDDED:
        from config.embedded import embedded_worker_start

        worker = embedded_worker_start(beat=False)
        yield worker
        worker.stop()
        return
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool",
            "threads",
            "-c",
            "4",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def _pump():
        for line in proc.stdout:
            lines.append(line)
            if " ready." in line:
                ready.set()

    threading.Thread(target=_pump, daemon=True).start()
    try:
        wait_for(
            lambda: ready.is_set() or proc.poll() is not None,
            timeout=60,
            what="celery worker ready",
        )
        assert ready.is_set(), "celery worker exited early:\n" + "".join(lines[-30:])
        yield proc
    finally:
        process_stop(proc)


@pytest.fixture
def asgi_server(transactional_db):
    """`manage.py serve` on a free port, sharing this run's database (and worker, when embedded)."""
    port = free_port()
    procs = []
    if not settings.EMBEDDED:
        procs.append(
            subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "--pool",
                    "threads",
                    "-c",
                    "4",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel",
                    "WARNING",
                ],
                cwd=ROOT,
                env=subprocess_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    log = (settings.DATA_DIR / f"serve-{port}.log").open("w")
    server = subprocess.Popen(
        [PYTHON, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=subprocess_env(ALLOWED_HOSTS="127.0.0.1,localhost"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    procs.append(server)
    import urllib.request

    def _up():
        if server.poll() is not None:
            raise AssertionError("server exited:\n" + Path(log.name).read_text()[-3000:])
        try:
            return (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=2).status == 200
            )
        except OSError:
            return False

    try:
        wait_for(_up, timeout=60, what="ASGI server to answer")
        yield f"http://127.0.0.1:{port}"
    finally:
        for p in reversed(procs):
            process_stop(p)
        log.close()


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(tmp_path):
    """A Chromium page (Debian's /usr/bin/chromium driven by Playwright)."""
    import os

    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs a loop
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _cgroups_remove(data_dir: Path) -> None:
    """bubblewrap cgroups this run's installations left (spares included: a SIGKILLed worker
    runs no exit hook), and spare cgroups of any worker process that is gone."""
    from sandboxes.backends import cgroups
    from sandboxes.backends.local import install_id

    for path in [data_dir, *(p for p in data_dir.iterdir() if p.is_dir())]:
        for cgroup in cgroups.cgroups_owned(install_id(path)):
            cgroups.cgroup_remove([cgroup])
    cgroups.spares_reap()


def pytest_sessionfinish(session, exitstatus):
    """Remove this run's data dir and Redis keys (sandboxes were cleaned up by their fixtures)."""
    import shutil

    from sandboxes.trash import removers_close

    removers_close()  # this process's idle-priority removers: they finish, then exit
    data_dir = Path(settings.DATA_DIR)
    if settings.TESTING and data_dir.name.startswith("test-") and not settings.DEBUG:
        # Overlay mounts a killed worker left mid-fork (its sandbox is swept only after a
        # grace period, longer than a test run): unmounted, deepest first, before removing.
        prefix = f"{data_dir.resolve()}/"
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for target in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)
        _cgroups_remove(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    if settings.TESTING and settings.REDIS_URL and settings.REDIS_PREFIX.startswith("convoy-test-"):
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


@pytest.fixture
def package_index_env(monkeypatch, settings):
    """CONVOY_EGRESS_INDEX_ADDRESSES as this host's operator would set it, so image builds reach
    the host's package indexes through the proxy: in the environment (a worker process started
    after this fixture inherits it) and in this process's settings, with its egress proxy
    made afresh (the embedded shape's in-process worker)."""
    from sandboxes.egress.worker import egress_proxy_stop
    from tests.package_indexes import host_index_addresses

    value = host_index_addresses()[0]
    if value:
        monkeypatch.setenv("CONVOY_EGRESS_INDEX_ADDRESSES", value)
        settings.EGRESS_INDEX_ADDRESSES = value
    egress_proxy_stop()
    yield value
    egress_proxy_stop()
