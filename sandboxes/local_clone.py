"""A local repository's checkout in one git process: no mirror on the way.

A `file://` repository (always under `CONVOY_REPO_ROOTS`) is already on this host, so a run's
checkout clones it straight into the sandbox's workspace (or the staging directory of a
checkout made ahead): `git clone --no-hardlinks --branch <ref>` copies its object files (never
links them: a sandbox must not be able to write the repository's objects) and checks the
branch or tag out. The clone is then made to look exactly like `repos.clone_at`'s: our own
config (no remote, no branch settings), a detached HEAD at the commit, no refs, no reflogs (they
name the host path), and the run's excludes. Two git processes and a copy of a mirror became
one process.

Anything else (a commit id or an expression as the ref, a repository that borrows objects
through `alternates`, a clone git refuses) returns None, and the caller takes the mirror's
path, which says what is wrong where it is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sandboxes.backends.base import SandboxError
from sandboxes.trash import tree_remove


def git_config_text(sha: str) -> str:
    """`.git/config` of a sandbox's clone: its object format, nothing that points anywhere."""
    version = "1\n[extensions]\n\tobjectformat = sha256" if len(sha) == 64 else "0"
    return (
        f"[core]\n\trepositoryformatversion = {version}\n"
        "\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"
    )


def exclude_write(gitdir: Path, exclude: str) -> None:
    """The clone's `.git/info/exclude` (the run's excludes), if there are any."""
    if exclude:
        (gitdir / "info").mkdir(exist_ok=True)
        (gitdir / "info" / "exclude").write_text(exclude)


def local_source(url: str) -> Path | None:
    """The repository path of a validated `file://` URL; None for any other URL."""
    if not url.startswith("file://"):
        return None
    return Path(unquote(urlsplit(url).path))


def clone_local(
    *, git, source: Path, ref: str, dest: Path, exclude: str = "", discard=tree_remove
) -> str | None:
    """Clone `source` at branch or tag `ref` into the empty directory `dest` with `git` (the
    host-side git of `sandboxes.repos`: `core.git.git_run`); the commit id, or None (with
    `dest` emptied again) when the mirror's path must do it. `discard(path)` removes the
    directory of files the clone wrote that `clone_at` would not have (`trash.trash_put`)."""
    if _tag_and_branch(source, ref):
        return None  # git resolves such a name to the tag; `clone --branch` to the branch
    try:
        git(
            "clone", "--quiet", "--no-hardlinks", "--template=", "--single-branch",
            "--no-tags", "--branch", ref, "--", str(source), str(dest),
        )  # fmt: skip
        sha = _gitdir_reset(dest / ".git", exclude, discard)
    except (SandboxError, OSError, ValueError):
        sha = None
    if sha is None:
        _empty(dest)
    return sha


def _gitdir_reset(gitdir: Path, exclude: str, discard) -> str | None:
    """Make the fresh clone's `.git` what `clone_at` makes; its commit, or None. What goes
    is renamed into one directory for `discard`: removing it here (freeing blocks) cost more
    than the rest of this function."""
    if (gitdir / "objects" / "info" / "alternates").exists():
        return None  # it borrows objects from elsewhere: the mirror's path copies them
    head = (gitdir / "HEAD").read_text().strip()
    # A branch is checked out as a ref; a tag as its commit, detached.
    sha = _ref_read(gitdir, head[5:]) if head.startswith("ref: ") else head
    if sha is None or len(sha) not in (40, 64) or not all(c in "0123456789abcdef" for c in sha):
        return None
    old = gitdir / f"old-{secrets.token_hex(4)}"
    old.mkdir()
    for name in ("packed-refs", "logs", "FETCH_HEAD", "ORIG_HEAD", "refs", "HEAD", "config"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(gitdir / name, old / name)
    discard(old)
    (gitdir / "refs" / "heads").mkdir(parents=True)
    (gitdir / "refs" / "tags").mkdir()
    (gitdir / "config").write_text(git_config_text(sha))
    (gitdir / "HEAD").write_text(sha + "\n")
    exclude_write(gitdir, exclude)
    return sha


def _tag_and_branch(source: Path, ref: str) -> bool:
    """Whether the repository also has a tag named `ref` (read from its files, no git)."""
    for gitdir in (source / ".git", source):
        if (gitdir / "refs" / "tags" / ref).exists():
            return True
        with contextlib.suppress(OSError):
            packed = (gitdir / "packed-refs").read_text(errors="replace")
            if f" refs/tags/{ref}\n" in packed or packed.endswith(f" refs/tags/{ref}"):
                return True
    return False


def _ref_read(gitdir: Path, name: str) -> str | None:
    """The id a ref names in a repository git just wrote (a loose file, else packed-refs)."""
    if not name.startswith("refs/") or ".." in name:
        return None
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return (gitdir / name).read_text().strip()
    with contextlib.suppress(FileNotFoundError):
        for line in (gitdir / "packed-refs").read_text().splitlines():
            sha, _, ref = line.partition(" ")
            if ref == name:
                return sha
    return None


def _empty(dest: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(dest):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
