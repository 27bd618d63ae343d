"""The spec as a modal.Image chain, against a recording fake of the modal.Image API whose every
call is checked against the real SDK's signature (no network)."""

from __future__ import annotations

import inspect

import modal
import pytest

from sandboxes.images.build import SYSTEM_PATH
from sandboxes.images.modal_image import modal_image_from_spec
from sandboxes.images.spec import image_spec_parse

pytestmark = pytest.mark.shapes("embedded", "production")


class FakeModalImage:
    """Records the chain of modal.Image calls; refuses arguments the real SDK would refuse."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    @classmethod
    def _start(cls, name, *args, **kwargs) -> FakeModalImage:
        inspect.signature(getattr(modal.Image, name)).bind(*args, **kwargs)
        return cls([(name, args, kwargs)])

    @classmethod
    def debian_slim(cls, *args, **kwargs):
        return cls._start("debian_slim", *args, **kwargs)

    @classmethod
    def from_registry(cls, *args, **kwargs):
        return cls._start("from_registry", *args, **kwargs)

    def _then(self, name, *args, **kwargs) -> FakeModalImage:
        inspect.signature(getattr(modal.Image, name)).bind(self, *args, **kwargs)
        return FakeModalImage([*self.calls, (name, args, kwargs)])

    def apt_install(self, *a, **k):
        return self._then("apt_install", *a, **k)

    def pip_install(self, *a, **k):
        return self._then("pip_install", *a, **k)

    def run_commands(self, *a, **k):
        return self._then("run_commands", *a, **k)

    def env(self, *a, **k):
        return self._then("env", *a, **k)


PATH = "/opt/convoy-venv/bin:/opt/convoy-npm/bin:" + SYSTEM_PATH


def test_debian_spec_is_one_call_per_step():
    spec = image_spec_parse(
        {"base": "debian:bookworm", "apt": ["git"], "pip": ["pytest==8.*"], "npm": ["x@1"],
         "run": ["echo hi"], "env": {"LANG": "C.UTF-8"}}
    )  # fmt: skip
    image = modal_image_from_spec(spec, image_api=FakeModalImage)
    assert image.calls == [
        ("debian_slim", (), {}),
        ("apt_install", ("git", "nodejs", "npm"), {}),
        ("pip_install", ("pytest==8.*",), {}),
        ("run_commands", ("npm install --global --prefix /opt/convoy-npm x@1",), {}),
        ("run_commands", ("echo hi",), {}),
        ("env", ({"LANG": "C.UTF-8", "PATH": PATH},), {}),
    ]


def test_oci_spec_uses_from_registry_with_the_secret_and_a_venv():
    secret = object()
    spec = image_spec_parse({"oci": "registry.example/team/py:3.12", "pip": ["pytest"]})
    image = modal_image_from_spec(spec, image_api=FakeModalImage, secret=secret)
    assert image.calls[0] == (
        "from_registry",
        ("registry.example/team/py:3.12",),
        {"secret": secret},
    )
    assert image.calls[1][0] == "run_commands"
    assert image.calls[1][1][1] == "/opt/convoy-venv/bin/pip install pytest"


def test_other_suite_comes_from_the_registry():
    spec = image_spec_parse({"base": "debian:trixie", "pip": ["pytest"]})
    image = modal_image_from_spec(spec, image_api=FakeModalImage)
    assert image.calls[0] == ("from_registry", ("debian:trixie-slim",), {})
    assert image.calls[1] == ("apt_install", ("python3-venv", "git"), {})
