"""The unprivileged host user a bubblewrap sandbox runs as when the worker is root.

bwrap started by root maps the sandbox's user (1000 inside) to root outside, and what the
kernel decides by user id alone (a root-only host file bound in, /proc/sys) treated the
command as the host's root. So a root worker starts bwrap as `CONVOY_SANDBOX_HOST_UID` (group
the same, no supplementary groups): what a sandbox must write (its workspace, tools area and
checkout) is that user's, and the directories bwrap passes through to bind its sources (the
data directory, the sandbox's own, the egress proxy's, an image's) give that group search
permission only (`--x` for the group, nothing for others): it lists none of them, and no
other host user gains anything. A worker that is not root starts bwrap as itself, as before.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from django.conf import settings

Owner = tuple[int, int]  # (uid, gid) on the host


def sandbox_host_owner() -> Owner | None:
    """Who bwrap sandboxes run as on the host; None when the worker is not root (they run
    as the worker's user, which is unprivileged already)."""
    if os.geteuid() != 0:
        return None
    uid = int(settings.SANDBOX_HOST_UID)
    return (uid, uid)


def tree_chown(path: Path | str, owner: Owner) -> None:
    """Give `path` and everything under it to `owner`, following no link (each directory is
    opened by descriptor: a link swapped in is neither followed nor listed). For trees no
    sandbox sees yet (a checkout being made), so nothing races the walk."""
    uid, gid = owner
    os.chown(path, uid, gid, follow_symlinks=False)
    for _, dirs, files, fd in os.fwalk(path, follow_symlinks=False):
        for name in (*dirs, *files):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def search_grant(path: Path | str, *, upto: Path | str, gid: int) -> None:
    """Let group `gid` pass through `path` and each directory above it up to `upto` (both
    included) where others may not: such a directory gets that group, with search permission
    only. Directories above `upto` are left as they are (the operator's)."""
    upto = Path(upto)
    for where in (Path(path), *Path(path).parents):
        if not where.is_relative_to(upto):
            return
        st = os.lstat(where)
        mode = stat.S_IMODE(st.st_mode)
        if not (mode & stat.S_IXOTH or (st.st_gid == gid and mode & stat.S_IXGRP)):
            os.chown(where, -1, gid, follow_symlinks=False)
            os.chmod(where, mode & ~stat.S_IRWXG | stat.S_IXGRP)  # noqa: S103 (group: search)
        if where == upto:
            return
