"""bubblewrap and gVisor on a campaign image: the image is `/`, read-only for every user (root
in gVisor included), its tools first on PATH; the tools area /convoy/home is $HOME, writable,
and carried by a snapshot into a fork. The image is the session's Python image (built once)."""

from __future__ import annotations

import pytest

from sandboxes.backends.base import ExecOutput, ExecResult, SandboxError, SandboxSpec
from sandboxes.backends.bubblewrap import BubblewrapBackend
from sandboxes.backends.gvisor import GVisorBackend
from sandboxes.images.mounts import image_env, image_rootfs
from sandboxes.images.services import image_ensure
from tests.sandboxes.conftest import _data_dir, local_cleanup
from tests.sandboxes.images.test_build_debian_mirror import PYTHON_IMAGE
from tests.sandboxes.images.test_services import _shell_tree


def _run(backend, handle, script: str) -> tuple[int, str]:
    out, code = b"", None
    for event in backend.exec(handle, ["/bin/sh", "-c", script]):
        if isinstance(event, ExecOutput):
            out += event.data
        elif isinstance(event, ExecResult):
            code = event.exit_code
    return code, out.decode()


@pytest.fixture
def image_spec(db, image_data) -> SandboxSpec:
    image = image_ensure(spec=PYTHON_IMAGE, actor=None)
    return SandboxSpec(
        timeout_s=300,
        image_root=str(image_rootfs(image)),
        image_key=image.key,
        image_env=image_env(image),
        tools_home=True,
    )


@pytest.mark.parametrize("engine", [BubblewrapBackend, GVisorBackend], ids=["bwrap", "gvisor"])
def test_a_sandbox_on_an_image(engine, image_spec):
    backend = engine(_data_dir())  # not pytest's tmp_path: 0700, bwrap's host user cannot bind
    handle = backend.create(image_spec)
    fork = None
    try:
        code, out = _run(backend, handle, "echo $HOME; command -v pytest; python3 --version")
        assert code == 0, out
        assert out.splitlines()[:2] == ["/convoy/home", "/opt/convoy-venv/bin/pytest"]
        # The image is read-only, for root too (gVisor runs commands as root).
        for target in ("/x", "/usr/x", "/opt/convoy-venv/bin/x", "/etc/passwd"):
            code, out = _run(backend, handle, f"echo x >> {target}")
            # (bwrap's user, not root outside, is refused by the file's mode before that)
            refused = "Read-only file system" in out or "Permission denied" in out
            assert code != 0 and refused, (target, out)
        code, out = _run(
            backend, handle, "echo kept > $HOME/tool && cat /workspace/.convoy-home/tool"
        )
        assert (code, out) == (0, "kept\n")  # the tools area lives in the workspace layer
        snapshot = backend.snapshot(handle)
        fork = backend.create_from_snapshot(snapshot, image_spec)
        code, out = _run(backend, fork, "cat /convoy/home/tool")
        assert (code, out) == (0, "kept\n")
    finally:
        for h in (handle, fork):
            if h is not None:
                backend.terminate(h)
        local_cleanup(backend)


def test_without_an_image_the_host_usr_and_no_tools_area():
    backend = BubblewrapBackend(_data_dir())
    handle = backend.create(SandboxSpec(timeout_s=60))
    try:
        code, out = _run(
            backend,
            handle,
            "test -e /convoy/home; echo $?; test -e /workspace/.convoy-home; echo $?",
        )
        assert (code, out) == (0, "1\n1\n")
    finally:
        backend.terminate(handle)
        local_cleanup(backend)


@pytest.mark.parametrize("engine", [BubblewrapBackend, GVisorBackend], ids=["bwrap", "gvisor"])
def test_an_image_with_a_linked_mount_point_is_refused_at_create(engine):
    """bwrap mounts after moving the host's root to /oldroot: on an image holding
    `/convoy -> /oldroot/<host dir>` (made before the build refused such links, or copied in
    by hand), a sandbox's bwrap made /convoy/home and /convoy/files in that host directory
    (as the sandboxes' host user, root before it). Such an image is refused as the sandbox is
    made, naming the link."""
    backend = engine(_data_dir())  # not pytest's tmp_path: 0700, bwrap's host user cannot bind
    victim = backend.data_dir / "victim"
    victim.mkdir()
    victim.chmod(0o777)  # a directory bwrap's user may write in (/tmp, say)
    tree = backend.data_dir / "image"
    _shell_tree(tree, ())
    for name in ("workspace", "tmp", "proc", "dev"):  # as every built image has them
        (tree / name).mkdir()
    (tree / "convoy").symlink_to(f"/oldroot{victim}")
    spec = SandboxSpec(
        timeout_s=60, image_root=str(tree), image_key="0" * 64, tools_home=True,
        files={"note.txt": b"x"},
    )  # fmt: skip
    handle, refused = None, None
    try:
        handle = backend.create(spec)
        _run(backend, handle, "true")
    except SandboxError as exc:
        refused = exc
    finally:
        made = sorted(p.name for p in victim.iterdir())
        local_cleanup(backend)
    assert made == []
    assert handle is None and "/convoy is a symbolic link" in str(refused)
