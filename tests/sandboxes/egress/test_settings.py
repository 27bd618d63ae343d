"""The egress settings: the test-only name mapping is refused by a production process (and
admitted for the workers the test suite starts); the operator's index ranges are checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.shapes("embedded", "production")

LOAD = "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); "
LOAD += "django.setup(); from sandboxes.egress.worker import egress_proxy; "
LOAD += "print(sorted(egress_proxy().test_hosts), egress_proxy().index_ranges)"


def _load(data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "PYTEST_VERSION"}
    clean = {k: v for k, v in clean.items() if not k.startswith("CONVOY_")}
    clean.update(CONVOY_DATA_DIR=str(data_dir), SECRET_KEY=settings.SECRET_KEY, **env)
    root = Path(settings.BASE_DIR)
    return subprocess.run(
        [sys.executable, "-c", LOAD], cwd=root, env=clean, capture_output=True, text=True
    )


def test_a_production_process_refuses_the_test_mapping(tmp_path):
    done = _load(tmp_path, CONVOY_EGRESS_TEST_HOSTS="api.test=127.0.0.1")
    assert done.returncode != 0
    assert "CONVOY_EGRESS_TEST_HOSTS: a test-only name mapping" in done.stderr


def test_a_worker_of_the_test_suite_gets_the_mapping_and_the_ranges():
    done = _load(
        Path(settings.DATA_DIR),  # var/test-<pid>, which the suite's workers run on
        CONVOY_EGRESS_TEST_HOSTS="api.test=127.0.0.1",
        CONVOY_EGRESS_INDEX_ADDRESSES="198.51.100.10/32",
    )
    assert done.returncode == 0, done.stderr
    assert "['api.test'] (IPv4Network('198.51.100.10/32'),)" in done.stdout


def test_index_ranges_with_loopback_or_metadata_stop_the_worker(tmp_path):
    done = _load(tmp_path, CONVOY_EGRESS_INDEX_ADDRESSES="169.254.169.254/32")
    assert done.returncode != 0
    assert "CONVOY_EGRESS_INDEX_ADDRESSES" in done.stderr and "cloud metadata" in done.stderr


def test_the_operators_host_addresses_are_read_and_checked(tmp_path):
    show = "print(egress_proxy().host_addresses.extra, egress_proxy().host_proxy_by_name)"
    load = LOAD.rpartition(";")[0] + "; " + show
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_VERSION"}
    env = {k: v for k, v in env.items() if not k.startswith("CONVOY_")}
    env.update(CONVOY_DATA_DIR=str(tmp_path), SECRET_KEY=settings.SECRET_KEY)
    env.update(CONVOY_EGRESS_HOST_PROXY_BY_NAME="true")

    def run(value: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", load],
            cwd=Path(settings.BASE_DIR),
            env={**env, "CONVOY_EGRESS_HOST_ADDRESSES": value},
            capture_output=True,
            text=True,
        )

    done = run("203.0.113.7, 2001:db8::/64")
    assert done.returncode == 0, done.stderr
    assert "(IPv4Network('203.0.113.7/32'), IPv6Network('2001:db8::/64')) True" in done.stdout
    done = run("203.0.113.7/24")
    assert done.returncode != 0
    assert "CONVOY_EGRESS_HOST_ADDRESSES: '203.0.113.7/24' is not an address" in done.stderr
