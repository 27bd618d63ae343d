"""Repositories reach sandboxes without network: host-side bare mirrors, local clones inside.

The worker fetches each repository once into a bare mirror under the data dir (reused by later
campaigns) and gives a sandbox's workspace a clone of the requested commit. URLs are checked
before git sees them: git treats `ext::…` as "run this command", `fd::…` as "talk to these
file descriptors" and a leading `-` as an option, so only https, ssh (URL or scp-style) and
file URLs under CONVOY_REPO_ROOTS are accepted. Git runs through `core.git.git_run`: no
hooks, no system or user config, no programs named by a repository's config, no prompts, so a
repository cannot make the host run anything. Network hosts must resolve to public
addresses (or be allowed by CONVOY_CODEHOST_ALLOW), checked at registration and again when
git connects, pinned to the vetted addresses; URLs carrying credentials are refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.conf import settings

from core.errors import Invalid
from core.git import (
    GIT_TIMEOUT_S,
    SSH_COMMAND,
    GitError,
    git_remote_is_local,
    git_run,
    local_pack_option,
)
from sandboxes.backends.base import Capability, SandboxError
from sandboxes.backends.host_user import Owner, tree_chown
from sandboxes.egress.addresses import address_refusal
from sandboxes.fsplace import subdirs_spread_made
from sandboxes.local_clone import clone_local, exclude_write, git_config_text, local_source
from sandboxes.models import Sandbox
from sandboxes.services import backend_get, sandbox_exec, sandbox_handle, sandbox_write_file
from sandboxes.trash import trash_put

SCP_LIKE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._~-]+)@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>.+)\Z")
HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
REF = re.compile(r"^[A-Za-z0-9._/@{}^~-]+\Z")
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._/-]*\Z")
SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")


class RepoUrlError(Invalid):
    """A repository URL Convoy refuses; `field` names the input, `message` says why."""

    def __init__(self, message: str, *, field: str = "url") -> None:
        super().__init__(message, field=field, code="invalid_repository")


def repo_url_validate(url: str) -> str:
    """The URL, stripped, if Convoy may fetch it; RepoUrlError naming the problem otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise RepoUrlError("A repository URL is required.")
    url = url.strip()
    if url.startswith("-"):
        raise RepoUrlError("The repository URL must not start with '-' (git would read an option).")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", url):
        transport = url.split("::", 1)[0]
        raise RepoUrlError(
            f"'{transport}::' URLs run git remote helpers (ext:: runs commands); "
            "use https://, ssh:// or file://."
        )
    if any(ord(c) < 0x20 or c in " \x7f" for c in url):
        raise RepoUrlError("The repository URL must not contain spaces or control characters.")
    if "://" not in url:
        match = SCP_LIKE.match(url)
        if match and "/" not in match["host"] and len(match["host"]) > 1:
            _host_check(match["host"])
            if match["path"].startswith("-"):
                raise RepoUrlError("The repository path must not start with '-'.")
            return url
        raise RepoUrlError(
            "Use a full repository URL: https://…, ssh://…, user@host:path or file://… "
            "(plain local paths are not accepted)."
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:  # "https://[::1": an unclosed address, a port like :x
        raise RepoUrlError(f"The repository URL cannot be read: {exc}.") from None
    scheme = parts.scheme.lower()
    if scheme == "https" or scheme == "ssh":
        if parts.password is not None or (scheme == "https" and parts.username is not None):
            raise RepoUrlError(
                "The repository URL must not contain credentials (user:password@ or a token "
                "before '@'): they would be stored and shown to everyone who sees the "
                "repository. Store the token as a secret and let an admin grant it instead."
            )
        _host_check(parts.hostname or "")
        if parts.path.lstrip("/").startswith("-") or not parts.path.strip("/"):
            raise RepoUrlError("The repository path is missing or starts with '-'.")
        return url
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise RepoUrlError("file:// URLs must name a local path (file:///…).")
        path = Path(unquote(parts.path)).resolve()
        roots = [Path(r).resolve() for r in settings.REPO_ROOTS]
        root = next((r for r in roots if path == r or path.is_relative_to(r)), None)
        if root is None:
            raise RepoUrlError(
                "file:// repositories must live under CONVOY_REPO_ROOTS "
                f"({', '.join(str(r) for r in roots) or 'none configured'})."
            )
        _local_repository_check(path, root, roots)
        return f"file://{path}"
    raise RepoUrlError(
        f"'{scheme}' repository URLs are not accepted; use https://, ssh:// or file://."
    )


# Files of a git directory that, as links or as these files, make git read another
# repository (its objects, its refs, its common directory).
_GITDIR_LINKS = ("HEAD", "config", "refs", "packed-refs", "objects", "info", "logs", "worktrees")
_GITDIR_POINTERS = ("commondir", "objects/info/http-alternates")


def _local_repository_check(path: Path, root: Path, roots: list[Path]) -> None:
    """A file:// repository must be a repository of its own, reading nothing outside itself.

    A directory inside another repository's working tree is that repository's content: files
    committed there (`HEAD`, `objects/info/alternates`, `refs` as a link) make a valid git
    directory that borrows the objects and refs of any repository on this host (another
    campaign's mirror, Convoy's own), which a checkout then copied into a sandbox and a publish
    pushed into."""
    parent = path.parent
    while parent != root and parent.is_relative_to(root):
        if os.path.lexists(parent / ".git"):
            raise RepoUrlError(
                f"file:// repositories must not lie inside another repository's working tree "
                f"({parent}): register that repository instead."
            )
        parent = parent.parent
    dotgit = path / ".git"
    if os.path.islink(dotgit) or dotgit.is_file():
        raise RepoUrlError(f"{dotgit} must be a directory, not a link or a pointer elsewhere.")
    gitdir = dotgit if dotgit.is_dir() else path
    for name in _GITDIR_LINKS:
        if os.path.islink(gitdir / name):
            raise RepoUrlError(f"{gitdir / name} is a symbolic link: git would read elsewhere.")
    for name in _GITDIR_POINTERS:
        if os.path.lexists(gitdir / name):
            raise RepoUrlError(f"{gitdir / name}: the repository points at another one.")
    alternates = gitdir / "objects" / "info" / "alternates"
    if os.path.islink(alternates):
        raise RepoUrlError(f"{alternates} is a symbolic link: git would read elsewhere.")
    with contextlib.suppress(FileNotFoundError):
        # Objects borrowed from another repository (`git clone --shared`): only from one under
        # CONVOY_REPO_ROOTS too.
        for line in alternates.read_text(errors="replace").splitlines():
            if line.strip() and not line.startswith("#"):
                borrowed = (alternates.parent.parent / line.strip()).resolve()
                if not any(borrowed.is_relative_to(r) for r in roots):
                    raise RepoUrlError(
                        f"{alternates}: the repository borrows objects from {borrowed}, "
                        "outside CONVOY_REPO_ROOTS."
                    )


def _host_check(host: str) -> None:
    if not host or host.startswith("-") or not HOST.match(host):
        raise RepoUrlError(f"The repository host {host!r} is not a valid host name.")
    host_addresses_vet(host, strict=False)


def _allowlist() -> tuple[set[str], list]:
    names, networks = set(), []
    for entry in settings.CODEHOST_ALLOW:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return names, networks


def host_addresses_vet(host: str, *, strict: bool) -> list[str]:
    """The addresses `host` resolves to, when Convoy may connect to all of them (public, or
    allowed by CONVOY_CODEHOST_ALLOW); RepoUrlError otherwise. A host the allowlist names gives
    []. A name that does not resolve passes unless `strict` (registration may happen offline;
    fetching is strict)."""
    names, networks = _allowlist()
    if host.lower().rstrip(".") in names:
        return []
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        if strict:
            raise RepoUrlError(f"The repository host {host!r} does not resolve.") from None
        return []
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        reason = address_refusal(address)
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if reason and not any(ip.version == n.version and ip in n for n in networks):
            raise RepoUrlError(
                f"The repository host {host!r} resolves to {address} ({reason}): Convoy does "
                "not connect to non-public addresses unless CONVOY_CODEHOST_ALLOW lists the "
                "host or its network."
            )
    return addresses


def repo_connect_pinning(url: str) -> tuple[list[str], dict[str, str]]:
    """Git options and environment that make git connect to the addresses vetted now (not to
    whatever a second DNS answer says): https through curl's resolve list, ssh through its
    HostName (host keys stay filed under the name). Empty for local and allowlisted hosts."""
    if git_remote_is_local(url):
        return [], {}
    if "://" in url:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
    elif match := SCP_LIKE.match(url):
        scheme, host, port = "ssh", match["host"], None
    else:
        raise RepoUrlError(f"Not a repository URL Convoy connects to: {url!r}.")
    addresses = host_addresses_vet(host, strict=True)
    if not addresses:
        return [], {}
    if scheme == "https":
        listed = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
        return ["-c", f"http.curloptResolve={host}:{port or 443}:{listed}"], {}
    ssh = f"{SSH_COMMAND} -o HostName={addresses[0]} -o HostKeyAlias={host}"
    return [], {"GIT_SSH_COMMAND": ssh}


def git(
    *args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT_S, env: dict | None = None
) -> str:
    """Host-side git through `core.git.git_run` (no hooks, config-chosen programs or prompts)."""
    try:
        return git_run(*args, cwd=cwd, timeout=timeout, env=env).decode("utf-8", "replace")
    except GitError as exc:
        raise SandboxError(str(exc)) from None


def mirror_path(url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:20]
    return Path(settings.DATA_DIR) / "mirrors" / f"{digest}.git"


@contextlib.contextmanager
def _locked(path: Path, *, shared: bool = False):
    """Fetches hold the mirror's lock alone; copies out of it share it."""
    subdirs_spread_made(path.parent)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


def _fetched_stamp(path: Path) -> Path:
    return path.with_suffix(".fetched")


def mirror_fetch(*, url: str, fresh_after: float | None = None) -> Path:
    """The bare mirror of `url`, created on first use and brought up to date after that.

    With `fresh_after` (a Unix time, e.g. when a run's attempt started), a mirror fetched
    since then is used as it is: the variants of one attempt fetch a repository once, not
    once each.
    """
    url = repo_url_validate(url)
    path = mirror_path(url)
    stamp = _fetched_stamp(path)
    upload = local_pack_option(url, "upload-pack")
    pin, env = repo_connect_pinning(url)
    with _locked(path):
        if (path / "HEAD").exists():
            with contextlib.suppress(FileNotFoundError):
                if fresh_after is not None and stamp.stat().st_mtime >= fresh_after:
                    return path
            git(*pin, "-C", str(path), "fetch", "--prune", "--quiet", *upload, "origin", env=env)
        else:
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            source, local = url, []
            if url.startswith("file://"):
                # A repository under CONVOY_REPO_ROOTS: git copies (hard-links) its object files
                # instead of packing them through upload-pack and index-pack (one git process,
                # not six). Git refuses symlinks among them; later fetches use the transport.
                source, local = str(local_source(url)), ["--local"]
            git(
                *pin,  # the addresses the URL's host was checked at (no second DNS answer)
                "clone",
                "--mirror",
                "--quiet",
                "--template=",
                *local,
                *upload,
                "--",
                source,
                str(tmp),
                env=env,
            )
            if local and (tmp / "objects" / "info" / "alternates").exists():
                # It borrows objects (from a repository under the roots: repo_url_validate):
                # take a self-contained copy instead.
                shutil.rmtree(tmp)
                git(
                    "clone", "--mirror", "--quiet", "--template=", *upload, "--", url, str(tmp)
                )  # fmt: skip
            tmp.rename(path)
        stamp.touch()
    return path


def _branch_lookup(mirror: Path, ref: str) -> str | None:
    """The commit of `ref` when git would read it as the mirror's branch `ref`, without a git
    process (a branch always names a commit); None for anything else (tags, expressions,
    names that are ambiguous), which then goes to `git rev-parse`."""
    odd = "//" in ref or "/." in ref or ref.endswith(("/", ".", ".lock")) or SHA.match(ref)
    if odd or not PLAIN_NAME.match(ref) or (mirror / ref).exists():
        return None
    packed: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in (mirror / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name and not line.startswith(("#", "^")):
                packed[name] = sha
    found: dict[str, str] = {}
    # git's order for a short name: refs/<name>, tags, branches, remote-tracking branches.
    for candidate in (f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}",
                      f"refs/remotes/{ref}", f"refs/remotes/{ref}/HEAD"):  # fmt: skip
        try:
            found[candidate] = (mirror / candidate).read_text().strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if candidate in packed:
                found[candidate] = packed[candidate]
    sha = found.get(f"refs/heads/{ref}", "")
    if len(found) != 1 or not SHA.match(sha):
        return None
    return sha


def commit_resolve(*, mirror: Path, ref: str) -> str:
    if not ref or ref.startswith("-") or not REF.match(ref) or ".." in ref:
        raise RepoUrlError(f"The ref {ref!r} is not a valid branch, tag or commit.", field="ref")
    sha = _branch_lookup(mirror, ref)
    if sha:
        return sha
    try:
        return git(
            "-C", str(mirror), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"
        ).strip()
    except SandboxError:
        raise RepoUrlError(f"The repository has no commit {ref!r}.", field="ref") from None


def clone_at(*, mirror: Path, sha: str, dest: Path, exclude: str = "") -> None:
    """A standalone repository (own objects: a sandbox can't reach the mirror) checked out at sha.

    What `git clone --no-checkout` + `checkout` + `remote remove` made, with one git process:
    a fresh `.git` (no remote, no refs, no hooks) gets a copy of the mirror's object files,
    then `checkout --detach` writes the commit's files. `exclude`: its `.git/info/exclude`.
    """
    gitdir = dest / ".git"
    (gitdir / "refs" / "heads").mkdir(parents=True)
    (gitdir / "refs" / "tags").mkdir()
    (gitdir / "config").write_text(git_config_text(sha))
    (gitdir / "HEAD").write_text("ref: refs/heads/main\n")
    exclude_write(gitdir, exclude)
    with _locked(mirror, shared=True):  # no fetch (and its repacking) while the files copy
        _objects_copy(mirror / "objects", gitdir / "objects")
    git("-C", str(dest), "checkout", "--quiet", "--detach", sha)


def _objects_copy(src: Path, dst: Path) -> None:
    """Copy an objects directory: file contents only (git needs no modes or times, and
    `shutil.copytree`'s per-file stat, chmod, utime and xattr calls were most of a small
    repository's checkout); symlinks stay symlinks; alternates and temporary files are left."""
    os.mkdir(dst)
    with os.scandir(src) as entries:
        for entry in entries:
            name = entry.name
            if name == "alternates" or name.startswith("tmp_") or name.endswith(".lock"):
                continue
            target = os.path.join(dst, name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir():
                _objects_copy(Path(entry.path), Path(target))
            else:
                shutil.copyfile(entry.path, target, follow_symlinks=False)


# --- checkouts made ahead of their sandbox ------------------------------------------------------
# A run's first checkout (mirror fetch, objects copy, `git checkout`) is made in a background
# thread while the run loads its context and its sandbox is created, in a staging directory
# beside the workspaces (hidden from the engines' listings); once the sandbox exists its entries
# are renamed into the empty workspace. No sandbox sees the staging directory.
STAGING = ".checkouts"
STAGING_STALE_S = 3600.0
_ahead_pool: ThreadPoolExecutor | None = None
_ahead_pid = 0
_ahead_lock = threading.Lock()


def _staging_root() -> Path:
    return Path(settings.DATA_DIR) / "sandboxes" / STAGING


def _pool() -> ThreadPoolExecutor:
    global _ahead_pool, _ahead_pid
    with _ahead_lock:
        if _ahead_pool is None or _ahead_pid != os.getpid():  # threads do not survive a fork
            _ahead_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="convoy-checkout")
            _ahead_pid = os.getpid()
            _ahead_pool.submit(_staging_sweep)  # what a dead worker left
        return _ahead_pool


def _staging_sweep() -> None:
    with contextlib.suppress(FileNotFoundError):
        for path in _staging_root().iterdir():
            with contextlib.suppress(OSError):
                if time.time() - path.lstat().st_mtime > STAGING_STALE_S:
                    shutil.rmtree(path, ignore_errors=True)


def _checkout_into(
    dest: Path, *, url: str, ref: str, fresh_after: float | None, exclude: str
) -> str:
    """Check `url` at `ref` out into the empty directory `dest`; the commit id. A local
    repository's branch or tag is cloned straight from it (`local_clone`: one git process);
    anything else goes through the mirror (`mirror_fetch`, `commit_resolve`, `clone_at`)."""
    url = repo_url_validate(url)
    source = local_source(url)
    plain = PLAIN_NAME.match(ref) and not SHA.match(ref) and ".." not in ref
    if source is not None and plain:
        sha = clone_local(
            git=git,
            source=source,
            ref=ref,
            dest=dest,
            exclude=exclude,
            discard=functools.partial(trash_put, root=_staging_root().parent),
        )
        if sha is not None:
            return sha
    mirror = mirror_fetch(url=url, fresh_after=fresh_after)
    sha = commit_resolve(mirror=mirror, ref=ref)
    clone_at(mirror=mirror, sha=sha, dest=dest, exclude=exclude)
    return sha


def _nothing() -> None:
    pass


def _staged(
    url: str,
    ref: str,
    fresh_after: float | None,
    exclude: str,
    owner: Owner | None = None,
    engine=None,
) -> tuple[str, Path, Owner | None, Callable[[], None]]:
    """`owner`: the sandbox's host user (`host_user`), given the checkout here, in the
    background, before any sandbox sees it (a 50,000-file tree is a walk of its own).
    `engine`: made ahead of its sandbox, so claim the run's host user here (`owner_claim`,
    held by the staged directory) for the sandbox to take (`owner_adopt`). Returns the
    commit, the staged directory, its owner and what releases the staged directory's hold."""
    root = _staging_root()
    subdirs_spread_made(root)
    dest = root / secrets.token_hex(8)
    dest.mkdir(mode=0o700)
    release: Callable[[], None] = _nothing
    try:
        if engine is not None:
            owner = engine.owner_claim(dest)
            release = functools.partial(engine.owner_release, owner, dest)
        sha = _checkout_into(dest, url=url, ref=ref, fresh_after=fresh_after, exclude=exclude)
        if owner is not None:
            tree_chown(dest, owner)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        release()
        raise
    return sha, dest, owner, release


def checkout_ahead(
    *, backend: str, url: str, ref: str, fresh_after: float | None, exclude: str = ""
) -> Future | None:
    """Start the checkout `sandbox_repo_checkout(ahead=…)` will move into a sandbox of a local
    engine; None where the engine is not local (nothing to stage). Errors (RepoUrlError,
    SandboxError) come out of `sandbox_repo_checkout`. Give it to `checkout_discard` if it may
    go unused."""
    try:
        engine = backend_get(backend)
    except SandboxError:  # said again, in its place, by the sandbox's create
        return None
    if Capability.SIMULATED in engine.capabilities or not hasattr(engine, "workspace_path"):
        return None
    return _pool().submit(_staged, url, ref, fresh_after, exclude, None, engine)


def checkout_discard(ahead: Future | None) -> None:
    """Remove a staged checkout that was not moved into a sandbox (now, or when it is made)."""

    def remove(done: Future) -> None:
        if not done.cancelled() and done.exception() is None:
            shutil.rmtree(done.result()[1], ignore_errors=True)
            done.result()[3]()  # its host user's claim

    if ahead is not None:
        ahead.add_done_callback(remove)


def _staged_move(staged: Path, dest: Path, owner: Owner | None) -> None:
    try:
        for entry in os.listdir(staged):
            try:
                os.rename(staged / entry, dest / entry)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.move(staged / entry, dest / entry)  # the workspace is another mount
                if owner is not None:  # a copy: the worker's again, before any command runs
                    tree_chown(dest / entry, owner)
        staged.rmdir()
    except OSError as exc:
        raise SandboxError(f"could not move the checkout into the workspace: {exc}") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def sandbox_repo_checkout(
    *,
    sandbox: Sandbox,
    url: str,
    ref: str,
    fresh_after: float | None = None,
    ahead: Future | None = None,
    exclude: str = "",
) -> str:
    """Put a clone of `url` at `ref` in the sandbox's /workspace; return the commit sha.

    `fresh_after`: see `mirror_fetch`. `ahead`: a `checkout_ahead` of the same url, ref and
    exclude, moved in instead of checking out now. `exclude`: the clone's `.git/info/exclude`
    (patterns `git add -A` leaves out)."""
    engine = backend_get(sandbox.backend)
    if Capability.SIMULATED in engine.capabilities:  # the scale benchmark: no git at all
        return engine.simulated_commit(url, ref)
    if ahead is not None and hasattr(engine, "workspace_path"):
        sha, staged, owner, release = ahead.result()
        handle = sandbox_handle(sandbox)
        try:
            if owner is not None:  # the run's host user, claimed for the checkout
                engine.owner_adopt(handle, owner)
        finally:
            release()  # the sandbox holds it now (or, failing, its teardown frees it)
        _staged_move(staged, engine.workspace_path(handle), owner)
        return sha
    if hasattr(engine, "workspace_path"):  # a local engine: clone straight into the directory
        handle = sandbox_handle(sandbox)
        dest = engine.workspace_path(handle)
        owner = engine.workspace_owner(handle)
        if owner is not None:  # host git refuses a directory of another user's: staged here
            sha, staged, _, _ = _staged(url, ref, fresh_after, exclude, owner)
            _staged_move(staged, dest, owner)
            return sha
        return _checkout_into(dest, url=url, ref=ref, fresh_after=fresh_after, exclude=exclude)
    mirror = mirror_fetch(url=url, fresh_after=fresh_after)
    sha = commit_resolve(mirror=mirror, ref=ref)
    # A remote engine: ship a bundle of the commit and unpack it inside the sandbox.
    with tempfile.TemporaryDirectory(prefix="convoy-bundle-") as tmp:
        clone_at(mirror=mirror, sha=sha, dest=Path(tmp) / "repo")
        bundle = Path(tmp) / "repo.bundle"
        git("-C", str(Path(tmp) / "repo"), "bundle", "create", "--quiet", str(bundle), "HEAD")
        sandbox_write_file(
            sandbox=sandbox, path="/workspace/.convoy.bundle", data=bundle.read_bytes()
        )
    script = (
        "set -e; cd /workspace; git init -q; git fetch -q .convoy.bundle HEAD; "
        "rm -f .convoy.bundle; git checkout -q --detach FETCH_HEAD"
    )
    command = sandbox_exec(sandbox=sandbox, argv=["sh", "-c", script], timeout_s=GIT_TIMEOUT_S)
    if command.exit_code != 0:
        raise SandboxError(
            f"unpacking the repository in the sandbox failed (exit {command.exit_code})"
        )
    if exclude:
        sandbox_write_file(sandbox=sandbox, path=".git/info/exclude", data=exclude.encode())
    return sha
