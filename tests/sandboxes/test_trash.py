"""A terminated sandbox's files are removed at the lowest priority by a remover process, never on
the run's path; the remover removes only entries of its own trash directory; a remover too far
behind (or gone) means removal in place; what a dead remover left is swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sandboxes import trash
from sandboxes.backends.base import SandboxSpec
from sandboxes.backends.bubblewrap import BubblewrapBackend
from tests.sandboxes.conftest import local_cleanup

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def removers():
    yield
    trash.removers_close()


def _filled(root: Path, name: str, files: int = 3) -> Path:
    path = root / name
    (path / "sub").mkdir(parents=True)
    for i in range(files):
        (path / "sub" / f"f{i}").write_text("x" * 100)
    (path / "sub").chmod(0o500)  # read-only directories are removed too
    return path


def _until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _trash_empty(root: Path) -> bool:
    return not any((root / trash.TRASH).iterdir())


def test_a_terminated_sandbox_leaves_its_place_at_once_and_its_files_go_at_lowest_priority(
    tmp_path, removers
):
    backend = BubblewrapBackend(tmp_path)
    try:
        handle = backend.create(SandboxSpec(timeout_s=60))
        backend.write_file(handle, "big.txt", b"y" * 100_000)
        place = backend.ws.dir(handle.external_id)
        root = backend.ws.root
        backend.terminate(handle)

        assert not place.exists()  # gone from the sandboxes' directory when terminate returns
        assert handle.external_id not in backend.ws.ids()
        remover = trash._removers[root / trash.TRASH]
        _until(lambda: _trash_empty(root), "the remover to empty the trash")
        # Set before it reads its first name.
        assert os.getpriority(os.PRIO_PROCESS, remover.proc.pid) == 19
    finally:
        local_cleanup(backend)


def test_the_remover_removes_only_entries_of_its_own_trash(tmp_path):
    root = tmp_path / "sandboxes"
    (root / trash.TRASH).mkdir(parents=True)
    victim = _filled(tmp_path, "victim")  # beside the root: reachable as ../../victim
    _filled(root / trash.TRASH, "mine")
    remover = subprocess.Popen(
        [sys.executable, "-I", "-S", trash.__file__, str(root / trash.TRASH)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    names = ["../../victim", str(victim), "..", ".", "../..", "mine"]
    out, _ = remover.communicate("".join(f"{n}\n" for n in names).encode(), timeout=30)

    assert out == b"." * len(names)  # each name answered, refused or removed
    assert (victim / "sub" / "f0").read_text() == "x" * 100
    assert not (root / trash.TRASH / "mine").exists()
    assert (root / trash.TRASH).is_dir()


def test_past_its_backlog_or_without_a_remover_a_directory_is_removed_in_place(
    tmp_path, removers, monkeypatch
):
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(trash, "BACKLOG_MAX", 2)
    trash.trash_put(_filled(root, "first"), root=root)
    remover = trash._removers[root / trash.TRASH]
    _until(lambda: _trash_empty(root), "the first removal")
    os.kill(remover.proc.pid, signal.SIGSTOP)  # a remover that gets no CPU time
    try:
        for name in ("a", "b", "c", "d"):
            trash.trash_put(_filled(root, name), root=root)
            assert not (root / name).exists()
        # Two wait in the trash for the stopped remover; the others were removed in place.
        assert len(list((root / trash.TRASH).iterdir())) == 2
    finally:
        os.kill(remover.proc.pid, signal.SIGCONT)
    _until(lambda: _trash_empty(root), "the remover to catch up")

    remover.proc.kill()
    remover.proc.wait()
    trash.trash_put(_filled(root, "e"), root=root)  # a new remover is started
    _until(lambda: _trash_empty(root), "the new remover")
    assert trash._removers[root / trash.TRASH].proc.pid != remover.proc.pid


def test_the_sweep_removes_what_a_dead_remover_left(tmp_path):
    root = tmp_path / "sandboxes"
    left = _filled(root / trash.TRASH, "left-by-a-dead-worker")
    assert trash.trash_sweep(root, older_than_s=3600) == []  # too recent: maybe still given
    assert left.exists()
    assert trash.trash_sweep(root, older_than_s=0) == ["left-by-a-dead-worker"]
    assert _trash_empty(root)


def _deep(path: Path, depth: int) -> None:
    """`depth` nested directories under `path`, made by descriptor (no long path names)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def test_a_tree_deeper_than_pythons_stack_is_removed_and_the_sweep_goes_on(tmp_path):
    """A command can make a tree 1,500 directories deep with a few MB: `shutil.rmtree` raised
    RecursionError on it, which stopped the remover, the trash sweep and the reaper's pass."""
    root = tmp_path / "root"
    (root / trash.TRASH).mkdir(parents=True)
    deep = root / trash.TRASH / "deep"
    deep.mkdir()
    try:
        _deep(deep, 3000)
        other = root / trash.TRASH / "other"
        other.mkdir()
        assert sorted(trash.trash_sweep(root, older_than_s=-1)) == ["deep", "other"]
        assert list((root / trash.TRASH).iterdir()) == []
    finally:  # pytest's own clean-up of old temporary directories recurses as rmtree did
        subprocess.run(["rm", "-rf", str(root)], check=True)


SANDBOX_OWNER = 54_321  # an unprivileged uid no one else uses here


def test_a_directory_a_command_locked_is_removed_by_a_worker_that_is_not_root(tmp_path):
    """`chmod 000` on a directory of its workspace stopped the removal of the whole tree for a
    worker that is not root (the sandbox's files are the worker's own: it can unlock them).
    As root here, the removal runs in a child that has become the tree's unprivileged owner."""
    if os.geteuid() == 0:
        place = Path(tempfile.mkdtemp(prefix="convoy-locked-"))  # /tmp: passable by that uid
        owner = SANDBOX_OWNER
    else:
        place, owner = tmp_path, os.geteuid()
    try:
        tree = place / "sandbox"
        _filled(tree, "locked")
        (tree / "locked" / "deeper").mkdir()
        (tree / "readonly").mkdir()
        (tree / "readonly" / "f").write_text("x")
        for where, dirs, files in os.walk(place):  # the place too: the owner removes from it
            for name in [where, *(os.path.join(where, n) for n in dirs + files)]:
                os.chown(name, owner, owner)
        os.chmod(tree / "locked", 0)
        os.chmod(tree / "readonly", 0o500)

        if owner == os.geteuid():
            trash.tree_remove(tree)
        else:
            pid = os.fork()
            if pid == 0:  # the child: become the owner, remove, report by exit status
                try:
                    os.setgroups([])
                    os.setgid(owner)
                    os.setuid(owner)
                    trash.tree_remove(tree)
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert not tree.exists()
    finally:
        if place != tmp_path:
            subprocess.run(["rm", "-rf", str(place)], check=True)


def test_unlocking_never_follows_a_link_put_in_a_locked_directorys_place(tmp_path, monkeypatch):
    """The handler looked at a locked directory (lstat), then changed its mode by path
    (os.chmod follows links): a command that swapped a link in between gave the link's target
    its mode with the owner's rwx added (a root-owned file became 0o5777). The race is made
    certain here: the first look at the path finds a locked directory, then a link is there."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    decoy.chmod(0o5077)
    target = tmp_path / "target"
    target.write_text("not the sandbox's")
    target.chmod(0o644)
    link = tmp_path / "tree" / "locked"
    link.parent.mkdir()
    link.symlink_to(target)
    real_lstat = os.lstat
    looked = []

    def lstat_raced(path, *args, **kwargs):
        if os.fspath(path) == str(link) and not looked:
            looked.append(path)
            return real_lstat(decoy)  # a locked directory, seen just before the swap
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(trash.os, "lstat", lstat_raced)
    trash._unlocked_retry(os.rmdir, str(link), None)
    monkeypatch.undo()
    assert looked
    assert (target.stat().st_mode & 0o7777) == 0o644
    decoy.chmod(0o700)


def test_a_locked_directory_gets_a_fixed_mode_not_the_sandboxs_bits(tmp_path, monkeypatch):
    """Unlocked, a directory has mode 0700 when its removal is tried again: not the sandbox's
    setuid, setgid, sticky or others' bits with rwx added."""
    locked = tmp_path / "tree" / "locked"
    (locked / "sub").mkdir(parents=True)
    locked.chmod(0o7077)
    real_rmtree = trash.shutil.rmtree
    modes = []

    def rmtree_seen(path, *args, **kwargs):
        modes.append(os.lstat(path).st_mode & 0o7777)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(trash.shutil, "rmtree", rmtree_seen)
    trash._unlocked_retry(os.rmdir, str(locked), None)
    monkeypatch.undo()
    assert modes and modes[0] == 0o700
    assert not locked.exists()
