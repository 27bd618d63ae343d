"""Real Debian images: these tests reach the Debian mirror named by the host's apt sources
(mmdebstrap) and the package indexes of the host's pip configuration. Each image is built once
per session (`image_data` keeps the files; later tests adopt them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from core.errors import Invalid
from sandboxes.images.build import image_dir
from sandboxes.images.mounts import bwrap_root_args, image_env
from sandboxes.images.services import image_ensure
from sandboxes.models import Image, ImageState

PYTHON_IMAGE = {"apt": ["python3-venv"], "pip": ["pytest"]}


def _run_on(image, argv, workspace):
    """A sandbox on the image the way backends run one: the image read-only as /, writable
    /workspace, /tmp and tools area on top, no network."""
    env = {**image_env(image), "HOME": "/convoy/home"}
    return subprocess.run(
        ["bwrap", *bwrap_root_args(image), "--proc", "/proc", "--dev", "/dev",
         "--tmpfs", "/tmp", "--bind", str(workspace), "/workspace", "--tmpfs", "/convoy/home",
         "--unshare-all", "--die-with-parent", "--chdir", "/workspace", "--", *argv],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_debian_mirror_python_image_runs_pytest_and_is_built_once(db, image_data, tmp_path):
    image = image_ensure(spec=PYTHON_IMAGE, actor=None)
    assert image.state == ImageState.READY
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    version = _run_on(image, ["/opt/convoy-venv/bin/pytest", "--version"], tmp_path)
    assert version.returncode == 0 and "pytest" in version.stdout + version.stderr
    # On PATH first, as a sandbox's commands find it.
    run = _run_on(image, ["sh", "-c", "python -c 'import pytest' && pytest -q"], tmp_path)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    # The image is read-only to the sandbox.
    write = _run_on(image, ["sh", "-c", "echo x > /usr/x"], tmp_path)
    assert write.returncode != 0
    # A second ensure reuses it: no build, the manifest untouched.
    manifest = image_dir(image.key) / "manifest.json"
    mtime, builds = manifest.stat().st_mtime_ns, Image.objects.get(pk=image.pk).builds
    again = image_ensure(spec={"pip": ["pytest"], "apt": ["python3-venv"]}, actor=None)
    assert again.key == image.key
    assert Image.objects.get(pk=image.pk).builds == builds and manifest.stat().st_mtime_ns == mtime
    assert image_env(image)["PATH"].startswith("/opt/convoy-venv/bin:")


def test_debian_mirror_unknown_apt_package_names_the_field(db, image_data):
    with pytest.raises(Invalid) as exc:
        image_ensure(spec={"apt": ["git", "curl", "pyton3"]}, actor=None)
    assert exc.value.field == "image.apt[2]"
    assert exc.value.message == "image.apt[2]: package not found: pyton3"
    image = Image.objects.get()
    assert image.state == ImageState.FAILED and image.error_field == "image.apt[2]"
    assert "Unable to locate package pyton3" in Path(image.build_log_path).read_text()
    assert not image_dir(image.key).exists()
