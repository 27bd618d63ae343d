"""The workspace walk that enforces the disk limit sees what a command locked against its owner.

A worker that is not root runs a command as itself, and `chmod 000` locks a directory against
its owner too: the walk skipped what it could not open, so a command could fill a directory,
lock it, and stay under the limit (50 MB counted as 4 KB). Run here as an unprivileged uid that
owns the tree, as such a worker is.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from sandboxes.backends.local import workspace_usage

pytestmark = pytest.mark.shapes("embedded", "production")

SANDBOX_OWNER = 54_321  # an unprivileged uid no one else uses here
MB = 1024 * 1024


def _filled(path: Path, mb: int) -> None:
    path.mkdir(parents=True)
    with open(path / "blob", "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(MB))


def _walk_as(
    owner: int, place: Path, tree: Path, *, stop_after: int, others: tuple[Path, ...] = ()
) -> int:
    """workspace_usage(tree)'s bytes, walked by `owner`: in a child that became it if this is
    root (the tree and `place` are then chowned to it first, but for `others`)."""
    if owner == os.geteuid():
        return workspace_usage(tree, stop_after=stop_after)[0]
    for where, dirs, files in os.walk(place):
        for name in [where, *(os.path.join(where, n) for n in dirs + files)]:
            if not any(Path(name).is_relative_to(p) for p in others):
                os.chown(name, owner, owner, follow_symlinks=False)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the owner, walk, report through the pipe
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(owner)
            os.setuid(owner)
            size = workspace_usage(tree, stop_after=stop_after)[0]
            os.write(write, str(size).encode())
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        reported = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return int(reported)


@pytest.fixture
def place(tmp_path):
    if os.geteuid() == 0:
        where = Path(tempfile.mkdtemp(prefix="convoy-walk-"))  # /tmp: passable by that uid
        yield where, SANDBOX_OWNER
        subprocess.run(["rm", "-rf", str(where)], check=True)
    else:
        yield tmp_path, os.geteuid()
        subprocess.run(["chmod", "-R", "u+rwx", str(tmp_path)], check=False)


def test_directories_a_command_locked_against_its_owner_are_counted(place):
    where, owner = place
    tree = where / "workspace"
    _filled(tree / "locked", 12)
    _filled(tree / "listed-not-searched", 12)
    _filled(tree / "open" / "below-a-locked-one", 12)
    os.chmod(tree / "locked", 0)
    os.chmod(tree / "listed-not-searched", 0o400)
    os.chmod(tree / "open", 0o100)  # searchable, not listable

    assert _walk_as(owner, where, tree, stop_after=1 << 40) >= 36 * MB


def test_a_directory_that_cannot_be_unlocked_counts_as_past_the_limit(place):
    """Not the walker's (so not its to unlock) and locked: what cannot be seen is not let pass."""
    where, owner = place
    if os.geteuid() != 0:
        pytest.skip("needs a directory owned by another uid")
    tree = where / "workspace"
    _filled(tree / "not-ours", 1)
    others = (tree / "not-ours",)
    assert _walk_as(owner, where, tree, stop_after=100 * MB, others=others) <= 100 * MB
    os.chmod(tree / "not-ours", 0)
    assert _walk_as(owner, where, tree, stop_after=100 * MB, others=others) > 100 * MB
