"""Configuration mistakes stop Convoy at start with one line naming the variable."""

import re
import subprocess

import pytest
from django.test import Client
from django.urls import path

from config import settings as convoy_settings
from config import urls as config_urls
from tests.support import PYTHON, ROOT

pytestmark = pytest.mark.shapes("embedded")
# Settings only parse these; `check` opens no connection.
PG = "postgres://convoy_owner@127.0.0.1:5432"
PG_APP = "postgres://convoy_app@127.0.0.1:5432"


def _env() -> dict[str, str]:
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTEST_VERSION", "DATABASE_URL", "REDIS_URL")
    }


def _check(**env_changes):
    env = _env()
    env.update(env_changes)
    return subprocess.run(
        [PYTHON, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CONVOY_SANDBOX_BACKEND": "docker"}, "CONVOY_SANDBOX_BACKEND"),
        ({"CONVOY_SANDBOX_BACKEND": "process"}, "CONVOY_SANDBOX_BACKEND"),
        ({"DATABASE_URL": "mysql://root@localhost/convoy"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"CONVOY_DEBUG": "maybe"}, "CONVOY_DEBUG"),
        ({"CONVOY_TEST_CRASH_BEAT": "1"}, "CONVOY_TEST_CRASH_BEAT"),
        ({"CONVOY_WORKER_CONCURRENCY": "four"}, "CONVOY_WORKER_CONCURRENCY"),
        ({"CONVOY_SANBOX_BACKEND": "bwrap"}, "CONVOY_SANBOX_BACKEND"),
        ({"CONVOY_SANDBOX_HOST_UIDS": "2000000..2000100"}, "CONVOY_SANDBOX_HOST_UIDS"),
        ({"CONVOY_SANDBOX_HOST_UIDS": "2000100-2000000"}, "CONVOY_SANDBOX_HOST_UIDS"),
        (
            {"CONVOY_SANDBOX_HOST_UIDS": "2000000+100", "CONVOY_SANDBOX_HOST_UID": "2000000"},
            "CONVOY_SANDBOX_HOST_UID",
        ),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0", "DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY"),
        ({"CONVOY_DATABASE_OWNER_URL": f"{PG}/convoy"}, "CONVOY_DATABASE_OWNER_URL"),
        (
            {"DATABASE_URL": f"{PG_APP}/convoy", "CONVOY_DATABASE_OWNER_URL": f"{PG}/other"},
            "CONVOY_DATABASE_OWNER_URL",
        ),
        (
            {"DATABASE_URL": f"{PG}/convoy", "CONVOY_DATABASE_OWNER_URL": f"{PG}/convoy"},
            "CONVOY_DATABASE_OWNER_URL",
        ),
    ],
)
def test_bad_configuration_fails_with_one_line(env, variable, tmp_path):
    result = _check(CONVOY_DATA_DIR=str(tmp_path), **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"convoy: configuration error: {variable}:")


@pytest.mark.parametrize(
    ("env", "ids"),
    [
        ({}, (2_000_000, 2_065_535)),
        ({"CONVOY_SANDBOX_HOST_UIDS": "3000000+1000"}, (3_000_000, 3_000_999)),
        ({"CONVOY_SANDBOX_HOST_UIDS": "3000000-3000009"}, (3_000_000, 3_000_009)),
        ({"CONVOY_SANDBOX_HOST_UID": "2000000"}, (2_000_000, 2_000_000)),  # the one-user form
    ],
)
def test_the_sandboxes_host_ids_are_a_range(env, ids, tmp_path):
    base = {k: "" for k in ("CONVOY_SANDBOX_HOST_UIDS", "CONVOY_SANDBOX_HOST_UID")}
    result = subprocess.run(
        [PYTHON, "-c", "from django.conf import settings; print(settings.SANDBOX_HOST_UIDS)"],
        cwd=ROOT,
        env={
            **_env(),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            **base,
            **env,
            "CONVOY_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == str(ids), result.stderr


def test_every_variable_convoy_reads_is_a_known_setting():
    """`CONVOY_DB_PREPARED` was read and documented but missing from the known settings, so
    setting it stopped Convoy as an "unknown setting"."""
    reads = re.compile(
        r"(?:env(?:str|bool|int|choice)\(|os\.environ\.get\(|os\.getenv\()\"(CONVOY_\w+)\""
    )
    read = set()
    for package in (
        "accounts",
        "agents",
        "audit",
        "campaigns",
        "config",
        "core",
        "review",
        "sandboxes",
    ):
        for source in (ROOT / package).rglob("*.py"):
            read |= set(reads.findall(source.read_text()))
    assert "CONVOY_DB_PREPARED" in read
    assert read <= convoy_settings.KNOWN_CONVOY_VARS, read - convoy_settings.KNOWN_CONVOY_VARS
    assert read >= convoy_settings.KNOWN_CONVOY_VARS, convoy_settings.KNOWN_CONVOY_VARS - read


def test_good_configuration_passes(tmp_path):
    result = _check(CONVOY_DATA_DIR=str(tmp_path), CONVOY_SANDBOX_BACKEND="gvisor")
    assert result.returncode == 0, result.stderr


def test_two_database_roles_pass_when_they_name_one_database(tmp_path):
    result = _check(
        CONVOY_DATA_DIR=str(tmp_path),
        DATABASE_URL=f"{PG_APP}/convoy",
        CONVOY_DATABASE_OWNER_URL=f"{PG}/convoy",
    )
    assert result.returncode == 0, result.stderr


def _outside_tests(**env_changes) -> dict[str, str]:
    """This environment as a Convoy process outside the test run sees it, with the changes."""
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTEST_VERSION", "DATABASE_URL", "REDIS_URL", "DEBUG", "CONVOY_DEBUG")
    }
    return {**env, **env_changes}


def _debug_of(**env_changes) -> str:
    done = subprocess.run(
        [
            PYTHON,
            "manage.py",
            "shell",
            "-c",
            "from django.conf import settings; print(settings.DEBUG)",
        ],
        cwd=ROOT,
        env=_outside_tests(**env_changes),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]  # after 5.2's "N objects imported"


@pytest.mark.parametrize(
    "shape", [{}, {"REDIS_URL": "redis://127.0.0.1:6379/0", "SECRET_KEY": "k" * 50}]
)
def test_debug_is_off_by_default_in_every_shape_and_convoy_debug_turns_it_on(shape, tmp_path):
    assert _debug_of(CONVOY_DATA_DIR=str(tmp_path), **shape) == "False"
    assert _debug_of(CONVOY_DATA_DIR=str(tmp_path), CONVOY_DEBUG="1", **shape) == "True"


def test_the_web_app_starts_on_a_fresh_data_directory_without_warnings(tmp_path):
    """`make run` on a new machine: loading the web app's middleware warns about nothing (it
    warned that the static files' directory did not exist, which looked like a fault)."""
    env = _outside_tests(
        CONVOY_DATA_DIR=str(tmp_path / "fresh"), DJANGO_SETTINGS_MODULE="config.settings"
    )
    load = (
        "import django; django.setup(); "
        "from django.core.handlers.wsgi import WSGIHandler; WSGIHandler()"
    )
    done = subprocess.run(
        [PYTHON, "-W", "error::UserWarning", "-c", load],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _boom(request):
    raise RuntimeError("secret-internal-detail")


urlpatterns = [path("boom/", _boom), *config_urls.urlpatterns]


@pytest.mark.django_db
def test_an_unexpected_error_gives_the_styled_500_page_without_a_traceback(settings):
    settings.ROOT_URLCONF = __name__
    response = Client(raise_request_exception=False).get("/boom/")
    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong" in page
    assert "/static/css/convoy.css" in page
    for leaked in ("Traceback", "secret-internal-detail", "RuntimeError", "SECRET_KEY"):
        assert leaked not in page
