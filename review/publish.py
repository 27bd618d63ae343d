"""Turn an approved diff into a commit on the spec's branch and push it to the repository.

Git runs on the host here (not in a sandbox), on a diff that came out of one, through
`core.git.git_run`: hooks are off (ours, and the receiving repository's for a local remote),
no user, system or repository-chosen programs run, prompts are off, and only file, https and
ssh remotes are accepted, so nothing in the repository or the diff can make the host run code.
"""

from __future__ import annotations

import base64
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from campaigns.spec_check import author_split
from core.git import GitError, git_run, local_pack_option
from core.patches import PatchError, patch_read
from sandboxes.repos import RepoUrlError, repo_connect_pinning

ALLOWED_REMOTE = re.compile(r"^(file|https|ssh)://|^[\w.-]+@[\w.-]+:")
BRANCH_RE = re.compile(r"^(?!/)(?!.*\.\.)(?!.*//)(?!.*@\{)[\w./-]+(?<![./])\Z")


class PublishError(Exception):
    """The change could not be published; the message says why in a reviewer's words."""

    def __init__(self, message: str, *, transient: bool = False, stale_lease: bool = False):
        super().__init__(message)
        self.transient = transient
        # The branch is not at the commit the push leased against (`replaces`).
        self.stale_lease = stale_lease


@dataclass(frozen=True)
class Pushed:
    branch: str
    commit: str
    remote_url: str


def author_parse(text: str | None) -> tuple[str, str]:
    """(name, email) of a `"Name <email>"` author; the installation's bot identity if none."""
    named = author_split(text or settings.PUBLISH_AUTHOR)
    if named is None:
        raise PublishError(f'changeset.author: expected "Name <email>", got {text!r}')
    return named


def git_auth_env(*, remote_url: str, token: str) -> dict[str, str]:
    """Config (through the environment, never argv) sending `token` to an https remote's host."""
    parts = urlsplit(remote_url)
    if parts.scheme != "https" or not token:
        return {}
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.https://{parts.netloc}/.extraheader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


def _git(cwd: Path, env: dict, *args: str, stdin: bytes | None = None, timeout: float = 300):
    try:
        out = git_run(*args, cwd=cwd, env=env, stdin=stdin, timeout=timeout)
    except GitError as exc:
        raise PublishError(str(exc)) from None
    return out.decode("utf-8", "replace").strip()


# Stored patches were read within limits.max_diff_mb (at most 100 MB) when they were captured.
PUBLISH_INFLATE_CAP = 128 * 1024 * 1024


def _patch_agrees_with_git(work: Path, env: dict, patch: bytes) -> None:
    """PublishError unless the patch reads strictly (`core.patches`, as reviewers were shown it)
    and `git apply` counts the same files and lines in it: publishing applies nothing the
    review page read differently."""
    try:
        files = patch_read(patch, inflate_cap=PUBLISH_INFLATE_CAP)
    except PatchError as exc:
        raise PublishError(f"the approved diff cannot be read: {exc.message}") from None
    numstat = _git(work, env, "apply", "--numstat", stdin=patch)
    counted = [line.split("\t", 2) for line in numstat.splitlines()]
    ours = sorted((f.binary, f.added, f.removed) for f in files)
    gits = sorted(
        (a == "-", 0 if a == "-" else int(a), 0 if d == "-" else int(d)) for a, d, _ in counted
    )
    if ours != gits:
        raise PublishError("the approved diff reads differently to git than it was shown")


def change_push(
    *,
    remote_url: str,
    base_commit: str,
    base_ref: str,
    patch: bytes,
    branch: str,
    message: str,
    author: str | None = None,
    token: str = "",
    replaces: str = "",
) -> Pushed:
    """Commit `patch` on top of `base_commit` and push it as `branch`.

    The branch must be Convoy's: absent on the remote, or still at `replaces`, the commit
    Convoy pushed there last (a republish after a rerun replaces it). Anything else there (the
    base branch, `main`, a branch someone changed since) is never overwritten: a spec naming
    `changeset.branch: main` force-pushed over main.
    """
    if not ALLOWED_REMOTE.match(remote_url):
        raise PublishError(f"remote {remote_url!r}: only file, https and ssh remotes are pushed")
    if not BRANCH_RE.match(branch or ""):
        raise PublishError(f"changeset.branch: {branch!r} is not a valid branch name")
    if branch == base_ref:
        raise PublishError(f"changeset.branch: {branch!r} is the branch the change is made on")
    if not patch:
        raise PublishError("the approved variant changed nothing; there is nothing to publish")
    name, email = author_parse(author)
    with tempfile.TemporaryDirectory(prefix="convoy-publish-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        try:
            pin, env = repo_connect_pinning(remote_url)
        except RepoUrlError as exc:
            raise PublishError(f"remote {remote_url!r}: {exc.message}") from None
        env.update(
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=email,
            GIT_COMMITTER_NAME="Convoy",
            GIT_COMMITTER_EMAIL="convoy@localhost",
            **git_auth_env(remote_url=remote_url, token=token),
        )
        _git(work, env, "init", "-q")
        _git(work, env, "remote", "add", "origin", remote_url)
        target = base_commit or base_ref
        upload = local_pack_option(remote_url, "upload-pack")
        try:
            _git(work, env, *pin, "fetch", "-q", "--no-tags", *upload, "origin", target)
        except PublishError:
            # Servers that refuse fetching by commit id: fetch the ref, then find the commit.
            _git(work, env, *pin, "fetch", "-q", "--no-tags", *upload, "origin", base_ref)
        _git(work, env, "checkout", "-q", "--detach", base_commit or "FETCH_HEAD")
        _patch_agrees_with_git(work, env, patch)
        try:
            _git(work, env, "apply", "--index", "--binary", "--whitespace=nowarn", stdin=patch)
        except PublishError as exc:
            raise PublishError(f"the approved diff no longer applies to {target}: {exc}") from exc
        _git(work, env, "commit", "-q", "--no-verify", "-m", message or "Convoy change")
        commit = _git(work, env, "rev-parse", "HEAD")
        try:
            receive = local_pack_option(remote_url, "receive-pack")
            _git(
                work,
                env,
                *pin,
                "push",
                "-q",
                f"--force-with-lease=refs/heads/{branch}:{replaces}",
                *receive,
                "origin",
                f"HEAD:refs/heads/{branch}",
            )
        except PublishError as exc:
            if "stale info" in str(exc):
                raise PublishError(
                    f"changeset.branch: {branch!r} exists on the remote and is not the commit "
                    "Convoy pushed there: it is not overwritten (choose another branch name, "
                    "or delete that branch)",
                    stale_lease=True,
                ) from None
            # The remote refusing the ref (a protected branch, a ref it cannot lock, no
            # permission) does not change by trying again; a network failure may.
            permanent = any(
                m in str(exc) for m in ("[remote rejected]", "denied", "[rejected]", "protected")
            )
            raise PublishError(str(exc), transient=not permanent) from exc
    return Pushed(branch=branch, commit=commit, remote_url=remote_url)
