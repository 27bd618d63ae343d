"""mmdebstrap's mounts never reach the host: it runs in a mount namespace of its own with its
own /dev/shm, and a build directory is never removed through a mount inside it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandboxes.images import build
from tests.sandboxes.images.test_oci import mmdebstrap_recorded

pytestmark = pytest.mark.shapes("embedded", "production")


def test_mmdebstrap_runs_with_a_mount_namespace_and_dev_shm_of_its_own(tmp_path):
    """Root mode bind-mounts the host's /dev/shm into the image while packages install; killed
    before its cleanup, it left the mount behind. Here the command Convoy runs is run with a
    stand-in for mmdebstrap that says where it is and writes to /dev/shm."""
    argv, env = mmdebstrap_recorded(tmp_path)
    at = argv.index("mmdebstrap")
    name = f"convoy-test-{os.getpid()}"
    stand_in = tmp_path / "mmdebstrap"
    stand_in.write_text(f"#!/bin/sh\nreadlink /proc/self/ns/mnt\ntouch /dev/shm/{name}\n")
    stand_in.chmod(0o755)

    out = subprocess.run([*argv[:at], str(stand_in)], capture_output=True, text=True, env=env)

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() != os.readlink("/proc/self/ns/mnt")
    assert not Path(f"/dev/shm/{name}").exists()  # its own /dev/shm, gone with it


def test_a_build_directory_is_never_removed_through_a_mount_inside_it(tmp_path):
    """A host directory mounted inside a build's root filesystem (as mmdebstrap mounted the
    host's /dev/shm) keeps its files when the build directory is removed."""
    host = tmp_path / "host-shm"
    host.mkdir()
    (host / "PostgreSQL.1234").write_text("shared memory")
    work = tmp_path / ".building-key-1"
    inside = work / "rootfs/dev/shm"
    inside.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(host), str(inside)], check=True)
    try:
        build.build_tree_remove(work)
    finally:
        subprocess.run(["umount", "--lazy", str(inside)], capture_output=True)

    assert (host / "PostgreSQL.1234").read_text() == "shared memory"
    assert not work.exists()
