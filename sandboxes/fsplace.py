"""Where the filesystem puts the directories Convoy makes and removes by the hundred.

Sandboxes, staged checkouts and mirrors are each a directory made, filled and removed within
seconds. On ext4 without a journal (as on some cloud disks, and this project's CI machines) a
new inode is not given one freed in the last minute of its block group (five minutes while
its inode table block is unwritten): the allocator checks each such inode in turn, so with
every sandbox in one group, making a file cost more the more files had just been removed
(200 `git clone`s, 4 at a time, each round after the previous round's removal: 1.3, 2.4, 3.0
and 3.6 s in one directory; 1.1, 1.0, 1.1 and 1.0 s with the flag below).

`subdirs_spread` marks a directory so ext4 places each new subdirectory as it would a
top-level one (the Orlov allocator's "top directory" flag, `chattr +T`): every sandbox lands
in a block group of its own choosing, away from the inodes the previous ones freed. The flag
is not inherited, so a sandbox's own files stay together. Other filesystems ignore or refuse
it; nothing depends on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from pathlib import Path

FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long); the kernel reads and writes an int
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def subdirs_spread(path: Path) -> bool:
    """Set the top-directory flag on `path` (made if missing); False where not supported."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        with _opened(path) as fd:
            flags = _flags(fd)
            if not flags & FS_TOPDIR_FL:
                fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL) + bytes(4))
        return True
    except OSError:  # ENOTTY, EOPNOTSUPP, EPERM…: this filesystem places directories itself
        return False


_spread: set[Path] = set()


def subdirs_spread_made(path: Path) -> None:
    """Make `path`; the first time in this process, also set the flag (`subdirs_spread`)."""
    if path in _spread:
        path.mkdir(parents=True, exist_ok=True)
        return
    subdirs_spread(path)
    _spread.add(path)


def subdirs_spread_flag(path: Path) -> bool:
    """Whether `path` has the flag."""
    try:
        with _opened(path) as fd:
            return bool(_flags(fd) & FS_TOPDIR_FL)
    except OSError:
        return False


@contextlib.contextmanager
def _opened(path: Path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        yield fd
    finally:
        os.close(fd)


def _flags(fd: int) -> int:
    buf = bytearray(8)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
    return struct.unpack_from("i", buf)[0]
