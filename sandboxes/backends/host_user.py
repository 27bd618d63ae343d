"""The unprivileged host users a bubblewrap sandbox runs as when the worker is root.

bwrap started by root maps the sandbox's user (1000 inside) to root outside, and what the
kernel decides by user id alone (a root-only host file bound in, /proc/sys) treated the
command as the host's root. So a root worker starts bwrap as a host user of
`CONVOY_SANDBOX_HOST_UIDS` (group the same id). Each run has its own: its source sandbox claims
a free one (`UidClaims`), and its snapshot and forks share it (one run's variants are one
trust domain; a fork's files are the snapshot's, which no fork could write as another user).
What a sandbox must write (its workspace, overlay upper layer, tools area and checkout) is
its user's, and its own directory is `0710` to its own group only: a command that escaped its
mount namespace can neither read nor write another run's files.

The range's first id is a group every sandbox has (supplementary), used only to pass through
the directories bwrap looks its read-only bind sources up in (the data directory, the
sandboxes' root, the egress proxy's root, an image's): those give it search permission only
(`--x`), so it lists none of them and no other host user gains anything. A range of one id
(`CONVOY_SANDBOX_HOST_UID`) is the single user of before: every sandbox runs as it, and it
is the passage group too. A worker that is not root starts bwrap as itself.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from sandboxes.backends.base import SandboxError

Owner = tuple[int, int]  # (uid, gid) on the host


@dataclass(frozen=True)
class HostIds:
    group: int  # every sandbox's passage group (search permission only)
    first: int  # the runs' users
    last: int

    @property
    def shared(self) -> bool:
        """One user for every sandbox (the single-user form)."""
        return self.first == self.group


def sandbox_host_ids() -> HostIds | None:
    """The ids bwrap sandboxes run as on the host; None when the worker is not root (they run
    as the worker's user, which is unprivileged already)."""
    if os.geteuid() != 0:
        return None
    first, last = settings.SANDBOX_HOST_UIDS
    return HostIds(first, first, first) if first == last else HostIds(first, first + 1, last)


def sandbox_host_group() -> int | None:
    """The sandboxes' passage group (see the module docstring); None when not root."""
    ids = sandbox_host_ids()
    return None if ids is None else ids.group


class UidClaims:
    """Which host user each run holds, across the worker's processes: `<root>/<uid>/` exists
    while anything holds that uid, made by `mkdir` (atomic: one claimant wins). Its holders
    are symbolic links in it, each naming the path that keeps it held (a sandbox's
    directory, a snapshot's layer, a checkout staged for a run's first sandbox): the claim
    goes with the last holder, and the reaper drops holders whose path is gone."""

    HELD_GRACE_S = 120.0

    def __init__(self, root: Path, ids: HostIds) -> None:
        self.root = root
        self.ids = ids

    def claim(self, holder: Path) -> Owner:
        """A free user for a new run's sandbox (or its staged checkout), held by `holder`."""
        ids = self.ids
        if ids.shared:
            return (ids.first, ids.first)
        self.root.mkdir(mode=0o700, exist_ok=True)
        for uid in self._candidates():
            try:
                os.mkdir(self.root / str(uid), 0o700)
            except FileExistsError:
                continue
            os.symlink(holder, self.root / str(uid) / holder.name)
            return (uid, uid)
        raise SandboxError(
            f"every host user of CONVOY_SANDBOX_HOST_UIDS ({ids.first - 1}-{ids.last}: "
            f"{ids.last - ids.first + 1} for runs) is held by a running run's sandboxes; "
            "widen the range or run fewer repositories at once"
        )

    def _candidates(self) -> Iterator[int]:
        """A few random ids (mostly free: one try), then every id not claimed when listed."""
        first, last = self.ids.first, self.ids.last
        for _ in range(8):
            yield first + secrets.randbelow(last - first + 1)
        taken = set(os.listdir(self.root))
        yield from (uid for uid in range(first, last + 1) if str(uid) not in taken)

    def hold(self, uid: int, holder: Path) -> None:
        """`holder` holds `uid` too (a fork, a snapshot, a sandbox taking its staged checkout's
        user): one link, no walk."""
        if self.ids.shared or not self.ids.first <= uid <= self.ids.last:
            return
        claim = self.root / str(uid)
        try:
            os.symlink(holder, claim / holder.name)
        except FileExistsError:
            pass
        except FileNotFoundError:  # its holders all went (the reaper dropped them): again
            self.root.mkdir(mode=0o700, exist_ok=True)
            try:
                os.mkdir(claim, 0o700)
            except FileExistsError:
                raise SandboxError(
                    f"host user {uid} was released and another run claimed it", transient=True
                ) from None
            os.symlink(holder, claim / holder.name)

    def release(self, uid: int, holder: Path) -> None:
        """`holder` no longer holds `uid`; the claim goes if it was the last holder."""
        if self.ids.shared:
            return
        claim = self.root / str(uid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim / holder.name)
        with contextlib.suppress(OSError):  # not empty: another holder keeps it
            os.rmdir(claim)

    def held(self) -> dict[int, list[str]]:
        """Each claimed uid's holders' paths."""
        found: dict[int, list[str]] = {}
        for claim in self.root.iterdir() if self.root.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                found[int(claim.name)] = [os.readlink(e.path) for e in os.scandir(claim)]
        return found

    def sweep(self, *, older_than_s: float) -> list[int]:
        """Drop holders whose path is gone (a worker that died before releasing), then the
        claims left without one; return the uids released. Younger than `older_than_s` are
        left alone: a claim's holder may not have made its path yet."""
        released = []
        now = time.time()
        for claim in self.root.iterdir() if self.root.is_dir() else []:
            with contextlib.suppress(OSError):
                for entry in os.scandir(claim):
                    old = now - entry.stat(follow_symlinks=False).st_mtime > older_than_s
                    if old and not os.path.lexists(os.readlink(entry.path)):
                        os.unlink(entry.path)
                if now - claim.lstat().st_mtime > older_than_s:
                    os.rmdir(claim)  # OSError (not empty): still held
                    released.append(int(claim.name))
        return released


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


def private_to(path: Path | str, gid: int) -> None:
    """`path` (a directory of the worker's) passable by group `gid` alone: one sandbox's."""
    os.chown(path, -1, gid, follow_symlinks=False)
    os.chmod(path, 0o710)  # noqa: S103 (its group: search only)
