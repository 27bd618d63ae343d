"""Fixtures for image tests: a data directory shared by the session (so each real build happens
once however many tests use it) and a real OCI registry (Debian's docker-registry) on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.backends.host_user import sandbox_host_group, search_grant
from sandboxes.egress.worker import egress_proxy_stop
from sandboxes.images import build
from tests.package_indexes import host_index_addresses


@pytest.fixture(scope="session")
def images_data_dir() -> Path:
    # Inside the test run's data directory (not pytest's 0700 temporary one): bwrap, started
    # as the sandboxes' host user, binds the images from there.
    path = Path(tempfile.mkdtemp(prefix="images-", dir=settings.DATA_DIR))
    if (group := sandbox_host_group()) is not None:  # as a backend on the run's data dir would
        search_grant(path, upto=settings.DATA_DIR, gid=group)
    return path


@pytest.fixture
def index_ranges(settings) -> Iterator[str]:
    """Builds go through this process's egress proxy: make it afresh with the host's index
    ranges (as the operator of this host would set them), and stop it after."""
    settings.EGRESS_INDEX_ADDRESSES = host_index_addresses()[0]
    egress_proxy_stop()
    yield settings.EGRESS_INDEX_ADDRESSES
    egress_proxy_stop()


@pytest.fixture
def image_data(settings, images_data_dir, index_ranges) -> Path:
    """Images live in the session's data directory; the DB rows are per test (files complete on
    disk are adopted by `image_ensure` without a rebuild)."""
    settings.DATA_DIR = images_data_dir
    return images_data_dir


def short_data_dir() -> Path:
    """A data directory with a short path: the build's egress socket lies inside it, and UNIX
    socket paths are limited to 107 bytes (pytest's tmp_path grows with the test's name and
    the run's number, and crossed it). The caller removes it."""
    return Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))


@pytest.fixture
def fresh_image_data(settings) -> Iterator[Path]:
    """A data directory of this test alone: every image in it is built by the test."""
    settings.DATA_DIR = short_data_dir()
    yield settings.DATA_DIR
    shutil.rmtree(settings.DATA_DIR, ignore_errors=True)


@pytest.fixture
def step_hook(monkeypatch):
    """Set build.STEP_HOOK for one test."""

    def install(hook) -> None:
        monkeypatch.setattr(build, "STEP_HOOK", hook)

    return install


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.pushes = 0

    def push_tiny(self, name: str, files: dict[str, str]) -> str:
        """Make a one-layer image holding `files` (path inside: text) and push it; its ref."""
        self.pushes += 1
        layout = self.root / f"layout-{self.pushes}"
        subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
        subprocess.run(["umoci", "new", "--image", f"{layout}:img"], check=True)
        for i, (inside, text) in enumerate(files.items()):
            src = self.root / f"file-{self.pushes}-{i}"
            src.write_text(text)
            subprocess.run(
                ["umoci", "insert", "--image", f"{layout}:img", str(src), inside], check=True
            )
        ref = f"{self.address}/{name}"
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:img",
             f"docker://{ref}"],
            check=True,
        )  # fmt: skip
        return ref

    def push_tree(self, name: str, tree: Path, *, tag: str = "latest") -> str:
        """Push the directory `tree` as a one-layer image's root filesystem; its ref."""
        self.pushes += 1
        layout = self.root / f"layout-{self.pushes}"
        subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
        subprocess.run(["umoci", "new", "--image", f"{layout}:img"], check=True)
        subprocess.run(["umoci", "insert", "--image", f"{layout}:img", str(tree), "/"], check=True)
        ref = f"{self.address}/{name}:{tag}"
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:img",
             f"docker://{ref}"],
            check=True,
        )  # fmt: skip
        return ref


@pytest.fixture
def oci_registry(tmp_path, settings, monkeypatch) -> Iterator[Registry]:
    """Debian's docker-registry serving plain HTTP on a free loopback port, stopped after; listed
    in CONVOY_LOCAL_REGISTRIES (this process's settings, and the environment of workers started
    after), as an operator lists the registry of their machine."""
    if not shutil.which("docker-registry"):
        pytest.fail("docker-registry is not installed: run make system-deps-test")
    registry = Registry(tmp_path / "registry")
    settings.LOCAL_REGISTRIES = [*settings.LOCAL_REGISTRIES, registry.address]
    monkeypatch.setenv("CONVOY_LOCAL_REGISTRIES", ",".join(settings.LOCAL_REGISTRIES))
    registry.root.mkdir()
    config = registry.root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {registry.root / 'store'}\nhttp:\n  addr: {registry.address}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(registry.root / "log").open("w"),
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{registry.address}/v2/", timeout=1).close()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"registry did not start: {(registry.root / 'log').read_text()}")
            time.sleep(0.05)
        yield registry
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
