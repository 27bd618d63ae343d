"""Directories removed at the lowest priority, off every run's path.

Removing a sandbox's files was a third of its teardown's CPU, and a teardown runs in the worker
beside the next runs: on a busy worker it took CPU (and the interpreter's lock) from them. On
ext4 mounted with `discard` and without a journal, each freed block is also discarded on the
spot (about 0.1 ms per file that held data, against 0.01 ms for an empty one).

`trash_put` renames a directory into `.trash` under its root (one rename: same filesystem) and
hands the entry's name to this process's remover: a child process at the lowest CPU priority
(nice 19), which gets little CPU time while runs want it. The directory is gone from where it
was at once; its files go when the machine has a moment. Not `SCHED_IDLE`: a removal sleeps
for its disk (a freed block is discarded on the spot on some disks) while holding the trash
directory's lock, and a task that gets CPU time only when nothing else wants it can then
keep a worker's rename into that directory waiting for as long as the machine is busy.

Bounds:
- At most `BACKLOG_MAX` entries handed over and not yet removed, per worker process; past that,
  and whenever the remover cannot be started or has died, `trash_put` removes in place, as
  before (a machine that is never idle cannot fill its disk with trash).
- The remover removes only entries of its own trash directory, by name: a name with a `/`, or
  `.` or `..`, is refused.
- It exits when its worker does (its input closes), after removing what it was given; entries
  a killed worker or remover left are removed by the reaper's sweep (`trash_sweep`).

Run as a script by `_Remover` (standard library only, `python -I -S`): `trash.py <trash dir>`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

TRASH = ".trash"
BACKLOG_MAX = 64


def dir_unlock(
    parent_fd: int, name: str, *, mode: int, inode: tuple[int, int] | None = None
) -> bool:
    """Give the directory `name` under `parent_fd` the permission bits `mode`, if it is a
    directory this process owns (and, given `inode`, that very device and inode number).

    A command can swap a link in for the directory at any moment: it is opened relative to its
    parent's descriptor, with O_NOFOLLOW and O_DIRECTORY, and the mode goes to what was opened.
    O_PATH, because its owner cannot open a directory it made unreadable (`chmod 000`) for
    reading; and since fchmod refuses an O_PATH descriptor, the mode goes through the
    descriptor's /proc/self/fd entry, which names the opened inode, never a path again (as
    glibc's fchmodat does for AT_SYMLINK_NOFOLLOW)."""
    if "/" in name or name in ("", ".", ".."):
        return False
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return False
        if inode is not None and (st.st_dev, st.st_ino) != inode:
            return False
        os.chmod(f"/proc/self/fd/{fd}", mode)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _dir_unlock_path(path: str) -> bool:
    """`dir_unlock(…, mode=0o700)` for `path`, through its parent's descriptor."""
    parent, name = os.path.split(os.path.normpath(path))
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        parent_fd = os.open(parent or ".", flags)
    except OSError:
        return False
    try:
        return dir_unlock(parent_fd, name, mode=0o700)
    finally:
        os.close(parent_fd)


def _unlocked_retry(func, path: str, exc_info) -> None:
    """rmtree's error handler: a directory a command made unreadable or read-only (`chmod 000`)
    stopped a worker that is not root from listing or emptying it. Its owner (the worker, who
    made the sandbox) gives it and its parent mode 0700, never following a link (a command may
    have put one in the directory's place: its target's mode stays as it was), and nothing of
    the sandbox's own bits (setuid, sticky, others' write) stays; then the removal is tried
    once more."""
    changed = False
    for target in (os.path.dirname(path), path):
        with contextlib.suppress(OSError):
            mode = os.lstat(target).st_mode
            if stat.S_ISDIR(mode) and mode & 0o700 != 0o700:
                changed = _dir_unlock_path(target) or changed
    if not changed:
        return  # another failure: left for rm -rf
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, onerror=_unlocked_retry)
        else:
            func(path)


def tree_remove(path: Path | str) -> None:
    """Remove `path` and everything under it, now; read-only and unreadable directories too."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    for _ in range(3):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        try:
            shutil.rmtree(path, onerror=_unlocked_retry)
        except RecursionError:  # deeper than Python's stack (a sandbox can make such a tree)
            break
        if not os.path.lexists(path):
            return
        time.sleep(0.05)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)


class _Remover:
    """This process's remover for one trash directory."""

    def __init__(self, trash_dir: Path) -> None:
        self.pid = os.getpid()
        self.trash_dir = trash_dir
        self.sent = 0
        self.done = 0
        self.lock = threading.Lock()  # the teardown thread and checkout threads share it
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(trash_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a ^C to the worker's terminal is the worker's to handle
        )
        os.set_blocking(self.proc.stdout.fileno(), False)

    def backlog(self) -> int:
        with contextlib.suppress(OSError):  # BlockingIOError: nothing new
            self.done += len(os.read(self.proc.stdout.fileno(), 65536))
        return self.sent - self.done

    def give(self, name: str) -> bool:
        """Hand `name` over; False if the remover is gone or too far behind."""
        with self.lock:
            if self.proc.poll() is not None or self.backlog() >= BACKLOG_MAX:
                return False
            try:
                self.proc.stdin.write(name.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return False
            self.sent += 1
            return True


_removers: dict[Path, _Remover] = {}
_lock = threading.Lock()


def _remover(trash_dir: Path) -> _Remover | None:
    with _lock:
        current = _removers.get(trash_dir)
        if current is not None and current.pid == os.getpid() and current.proc.poll() is None:
            return current
        try:
            _removers[trash_dir] = _Remover(trash_dir)
        except OSError:
            _removers.pop(trash_dir, None)
            return None
        return _removers[trash_dir]


def trash_put(path: Path, *, root: Path) -> None:
    """Remove the directory `path` (under `root`, on its filesystem) at the lowest priority; in
    place when that cannot be done (another filesystem, a remover gone or too far behind)."""
    trash_dir = root / TRASH
    name = f"{path.name[:40]}-{secrets.token_hex(6)}"
    try:
        trash_dir.mkdir(mode=0o700, exist_ok=True)
        os.rename(path, trash_dir / name)
    except FileNotFoundError:
        if not os.path.lexists(path):
            return  # already gone
        tree_remove(path)
        return
    except OSError:  # another filesystem or mount: removed here
        tree_remove(path)
        return
    remover = _remover(trash_dir)
    if remover is None or not remover.give(name):
        tree_remove(trash_dir / name)


def removers_close(timeout: float = 30) -> None:
    """Close this process's removers' input and wait for them: each removes what it was given,
    then exits (a worker need not call it: its removers exit when it does)."""
    with _lock:
        current = [r for r in _removers.values() if r.pid == os.getpid()]
        _removers.clear()
    for remover in current:
        with contextlib.suppress(OSError, ValueError):
            remover.proc.stdin.close()
        try:
            remover.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            remover.proc.kill()
            remover.proc.wait()
        remover.proc.stdout.close()


def trash_sweep(root: Path, *, older_than_s: float) -> list[str]:
    """Remove what a dead worker's remover left in `root`'s trash (entries renamed in more than
    `older_than_s` ago); the names removed."""
    trash_dir = root / TRASH
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(trash_dir) as entries:
        for entry in list(entries):
            with contextlib.suppress(OSError):
                # A rename sets the entry's change time: its time in the trash.
                if time.time() - entry.stat(follow_symlinks=False).st_ctime > older_than_s:
                    tree_remove(entry.path)
                    removed.append(entry.name)
    return removed


def _serve(trash_dir: Path) -> None:
    """The remover: each name read from stdin is removed from `trash_dir`, then a byte is
    written to stdout. Exits when stdin closes."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    for line in sys.stdin.buffer:
        name = line.rstrip(b"\n").decode(errors="replace")
        if name and "/" not in name and name not in (".", "..") and "\0" not in name:
            with contextlib.suppress(OSError):
                tree_remove(trash_dir / name)
        with contextlib.suppress(OSError):
            os.write(1, b".")


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
