"""Fixtures for sandbox tests: every backend the conformance suite runs against, cleaned up after.

`BACKEND_FACTORIES` maps a test id to a context manager that takes a fresh directory and
yields a backend; it terminates whatever the test left running. Add a backend by adding an
entry (the Modal fake adds "modal-fake").
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.backends.base import SandboxBackend


def _local(cls_path: str) -> Callable[[Path], AbstractContextManager[SandboxBackend]]:
    @contextlib.contextmanager
    def factory(data_dir: Path) -> Iterator[SandboxBackend]:
        module, _, name = cls_path.rpartition(".")
        backend = getattr(__import__(module, fromlist=[name]), name)(data_dir)
        try:
            yield backend
        finally:
            local_cleanup(backend)

    return factory


def local_cleanup(backend) -> None:
    """Terminate every sandbox, snapshot and container the backend's directory still holds."""
    for handle in backend.list({}):
        backend.terminate(handle)
    if hasattr(backend, "sweep"):
        backend.sweep(set(), grace_s=0)
    shutil.rmtree(backend.data_dir, ignore_errors=True)


BACKEND_FACTORIES: dict[str, Callable[[Path], AbstractContextManager[SandboxBackend]]] = {
    "gvisor": _local("sandboxes.backends.gvisor.GVisorBackend"),
    "bwrap": _local("sandboxes.backends.bubblewrap.BubblewrapBackend"),
    # The development-only backend keeps the same interface promises (not containment: it
    # has none, and is not in LOCAL_BACKENDS).
    "process": _local("sandboxes.backends.process.ProcessBackend"),
}
with contextlib.suppress(ImportError):  # the Modal backend's fake, where it exists
    from tests.sandboxes.fake_modal import modal_fake_backend

    BACKEND_FACTORIES["modal-fake"] = modal_fake_backend

LOCAL_BACKENDS = ("gvisor", "bwrap")


def _data_dir() -> Path:
    # Short: runsc keeps unix sockets under it, and their paths are limited to 108 bytes.
    path = Path(settings.DATA_DIR) / f"b-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    return path


@pytest.fixture(params=list(BACKEND_FACTORIES))
def backend(request) -> Iterator[SandboxBackend]:
    """Each backend in turn (the conformance suite)."""
    with BACKEND_FACTORIES[request.param](_data_dir()) as backend:
        yield backend


@pytest.fixture(params=LOCAL_BACKENDS)
def local_backend(request) -> Iterator[SandboxBackend]:
    """Each local engine in turn (the containment suite: it needs a real kernel boundary)."""
    with BACKEND_FACTORIES[request.param](_data_dir()) as backend:
        yield backend


@pytest.fixture
def engines_clean():
    """For tests that go through the services: terminate whatever they left on the engines."""
    yield
    from sandboxes import services

    for engine in list(services._backends.values()):
        if hasattr(engine, "sweep"):
            for handle in engine.list({}):
                engine.terminate(handle)
            engine.sweep(set(), grace_s=0)
