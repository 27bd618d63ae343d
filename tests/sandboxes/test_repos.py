"""Repository URLs Convoy refuses, and mirrors that put a commit in a sandbox without network."""

import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.backends.base import SandboxSpec
from sandboxes.fsplace import subdirs_spread, subdirs_spread_flag
from sandboxes.repos import (
    STAGING,
    RepoUrlError,
    checkout_ahead,
    checkout_discard,
    commit_resolve,
    mirror_fetch,
    mirror_path,
    repo_url_validate,
    sandbox_repo_checkout,
)
from sandboxes.services import (
    backend_get,
    sandbox_create,
    sandbox_exec,
    sandbox_handle,
    sandbox_read_file,
)
from tests.support import wait_for

both_shapes = pytest.mark.shapes("embedded", "production")


@both_shapes
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ext::sh -c touch% /tmp/pwned", "ext::"),
        ("ext::ssh -oProxyCommand=evil host", "ext::"),
        ("fd::17", "fd::"),
        ("fd::3,4/repo", "fd::"),
        ("-uhttps://example.com/r.git", "start with '-'"),
        ("--upload-pack=touch /tmp/pwned", "start with '-'"),
        ("ssh://-oProxyCommand=touch%20x/r.git", "not a valid host"),
        ("https://-example.com/r.git", "not a valid host"),
        ("git@host:-oProxyCommand=x", "must not start with '-'"),
        ("http://example.com/r.git", "'http' repository URLs are not accepted"),
        ("git://example.com/r.git", "'git' repository URLs are not accepted"),
        ("ftp://example.com/r.git", "'ftp' repository URLs are not accepted"),
        ("file:///etc", "CONVOY_REPO_ROOTS"),
        ("file:///root/../etc", "CONVOY_REPO_ROOTS"),
        ("file://otherhost/srv/r.git", "local path"),
        ("/srv/repos/r.git", "plain local paths"),
        ("../r.git", "plain local paths"),
        ("https://example.com/r.git\n--upload-pack=x", "control characters"),
        ("", "required"),
    ],
)
def test_refused_repository_urls_say_why(url, says):
    with pytest.raises(RepoUrlError) as caught:
        repo_url_validate(url)
    assert says in caught.value.message
    assert caught.value.field == "url"


@both_shapes
@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/example/app.git",
        "ssh://git@git.example.com:2222/team/app.git",
        "git@github.com:example/app.git",
    ],
)
def test_accepted_repository_urls(url):
    assert repo_url_validate(f"  {url} ") == url


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def origin():
    """A repository under CONVOY_REPO_ROOTS with two commits on main."""
    root = Path(settings.REPO_ROOTS[0]) / "app"
    root.mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=root)
    for i in (1, 2):
        (root / "VERSION").write_text(f"{i}\n")
        _git("add", "VERSION", cwd=root)
        _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"v{i}", cwd=root)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=True)


def _sha(repo: Path, ref: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", ref], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


@both_shapes
def test_checkout_puts_the_requested_commit_in_the_sandbox(db, origin, engines_clean):
    url = f"file://{origin}"
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
    first = _sha(origin, "main~1")
    assert sandbox_repo_checkout(sandbox=sandbox, url=url, ref=first) == first
    assert sandbox_read_file(sandbox=sandbox, path="VERSION") == b"1\n"
    seen = []
    sandbox_exec(
        sandbox=sandbox, argv=["git", "rev-parse", "HEAD"], on_output=lambda e: seen.append(e)
    )
    assert b"".join(e.data for e in seen).decode().strip() == first
    # The clone has its own objects and no remote: nothing points back at the host's mirror.
    seen.clear()
    sandbox_exec(sandbox=sandbox, argv=["git", "remote"], on_output=seen.append)
    assert seen == []


def _sandbox_says(sandbox, script: str) -> str:
    seen = []
    command = sandbox_exec(sandbox=sandbox, argv=["sh", "-c", script], on_output=seen.append)
    assert command.exit_code == 0, b"".join(e.data for e in seen)
    return b"".join(e.data for e in seen).decode()


@both_shapes
@pytest.mark.parametrize("made_ahead", [True, False])
def test_a_local_branch_is_cloned_straight_in_with_nothing_pointing_back_at_the_host(
    db, origin, engines_clean, made_ahead
):
    """A `file://` repository's branch is cloned straight from it (no mirror is made): the
    clone has copies of its objects (never hard links: the sandbox could write the host
    repository's objects through them), a detached HEAD at the branch's commit, no remote,
    refs or reflog (the reflog names the host path), and the run's excludes."""
    url, exclude = f"file://{origin}", "# by the test\n*.log\n"
    shutil.rmtree(mirror_path(url), ignore_errors=True)  # another test's
    ahead = None
    if made_ahead:
        ahead = checkout_ahead(
            backend="bwrap", url=url, ref="main", fresh_after=None, exclude=exclude
        )
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
    sha = sandbox_repo_checkout(sandbox=sandbox, url=url, ref="main", ahead=ahead, exclude=exclude)
    assert sha == _sha(origin, "main")
    assert not mirror_path(url).exists()
    said = _sandbox_says(
        sandbox,
        "git rev-parse HEAD; git symbolic-ref -q HEAD || echo detached; git remote; "
        "git for-each-ref; ls .git/logs 2>/dev/null; cat .git/config; git status --porcelain",
    )
    assert said.split("\n")[:2] == [sha, "detached"]
    assert str(origin) not in said and "[remote" not in said and "refs/" not in said
    assert sandbox_read_file(sandbox=sandbox, path=".git/info/exclude") == exclude.encode()
    objects = [p for p in (origin / ".git" / "objects").rglob("*") if p.is_file()]
    assert objects and all(p.stat().st_nlink == 1 for p in objects)


@both_shapes
def test_a_name_that_is_both_a_tag_and_a_branch_is_read_as_git_reads_it(db, origin, engines_clean):
    """`git clone --branch` would take the branch; git itself takes the tag, and so does
    Convoy (such a name goes through the mirror)."""
    _git("tag", "v", "main~1", cwd=origin)
    _git("branch", "v", "main", cwd=origin)
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
    sha = sandbox_repo_checkout(sandbox=sandbox, url=f"file://{origin}", ref="v")
    assert sha == _sha(origin, "refs/tags/v") == _sha(origin, "main~1")
    assert sandbox_read_file(sandbox=sandbox, path="VERSION") == b"1\n"


@both_shapes
def test_a_repository_that_borrows_objects_is_checked_out_through_the_mirror(
    db, origin, engines_clean
):
    """A repository with `objects/info/alternates` (a `git clone --shared`) would give the
    sandbox a clone pointing at a host path: its checkout goes through the mirror instead."""
    shared = origin.parent / "shared"
    subprocess.run(["git", "clone", "-q", "--shared", str(origin), str(shared)], check=True)
    try:
        sandbox = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
        url = f"file://{shared}"
        shutil.rmtree(mirror_path(url), ignore_errors=True)  # another test's
        assert sandbox_repo_checkout(sandbox=sandbox, url=url, ref="main") == _sha(origin, "main")
        assert mirror_path(url).exists()
        said = _sandbox_says(sandbox, "ls .git/objects/info; git log --oneline | wc -l")
        assert "alternates" not in said and said.split()[-1] == "2"
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=True)


@both_shapes
def test_a_checkout_made_ahead_is_moved_into_the_sandbox_and_an_unused_one_is_removed(
    db, origin, engines_clean
):
    url = f"file://{origin}"
    staging = Path(settings.DATA_DIR) / "sandboxes" / STAGING
    ahead = checkout_ahead(backend="bwrap", url=url, ref="main", fresh_after=None)
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
    assert sandbox_repo_checkout(sandbox=sandbox, url=url, ref="main", ahead=ahead) == _sha(
        origin, "main"
    )
    assert sandbox_read_file(sandbox=sandbox, path="VERSION") == b"2\n"
    seen = []
    sandbox_exec(sandbox=sandbox, argv=["git", "status", "--porcelain"], on_output=seen.append)
    assert seen == []  # a clean checkout of the commit, nothing left behind
    assert list(staging.iterdir()) == []
    engine = backend_get("bwrap")
    if engine.claims is not None and not engine.claims.ids.shared:
        # The host user claimed for the checkout is the sandbox's now, and held by it alone.
        owner = engine.workspace_owner(sandbox_handle(sandbox))
        version = engine.workspace_path(sandbox_handle(sandbox)) / "VERSION"
        assert (version.stat().st_uid, version.stat().st_gid) == owner
        sandbox_dir = str(engine.ws.dir(sandbox.external_id))
        assert engine.claims.held() == {owner[0]: [sandbox_dir]}

    unused = checkout_ahead(backend="bwrap", url=url, ref="main", fresh_after=None)
    checkout_discard(unused)  # removed once made (the thread making it removes it)
    wait_for(lambda: not list(staging.iterdir()), timeout=60, what="the unused checkout gone")
    if engine.claims is not None and not engine.claims.ids.shared:  # and its user's claim
        wait_for(lambda: len(engine.claims.held()) == 1, timeout=60, what="its claim released")


@both_shapes
@pytest.mark.parametrize("made_ahead", [True, False])
def test_a_checkout_carries_its_git_excludes(db, origin, engines_clean, made_ahead):
    """The run's excludes (the tools area, diff.exclude) are in the checkout before any command
    runs in the sandbox: an excluded file is never staged."""
    url, exclude = f"file://{origin}", "# by the test\n/.convoy-home/\n*.log\n"
    ahead = None
    if made_ahead:
        ahead = checkout_ahead(
            backend="bwrap", url=url, ref="main", fresh_after=None, exclude=exclude
        )
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
    sandbox_repo_checkout(sandbox=sandbox, url=url, ref="main", ahead=ahead, exclude=exclude)
    assert sandbox_read_file(sandbox=sandbox, path=".git/info/exclude") == exclude.encode()
    seen = []
    script = "touch build.log new.txt && git add -A . && git diff --cached --name-only"
    sandbox_exec(sandbox=sandbox, argv=["sh", "-c", script], on_output=seen.append)
    assert b"".join(e.data for e in seen).decode().split() == ["new.txt"]


@both_shapes
def test_sandboxes_checkouts_and_mirrors_are_placed_apart_on_disk(db, origin, engines_clean):
    """Each sandbox, staged checkout and mirror directory is placed as a top-level directory
    (ext4's `chattr +T`), so making files does not slow down after many were removed on a
    journal-less ext4 (sandboxes/fsplace.py). Skipped where the filesystem has no such flag."""
    probe = Path(settings.DATA_DIR) / "fsplace-probe"
    if not subdirs_spread(probe):
        pytest.skip("this filesystem has no top-directory flag")
    url = f"file://{origin}"
    ahead = checkout_ahead(backend="bwrap", url=url, ref="main", fresh_after=None)
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
    sandbox_repo_checkout(sandbox=sandbox, url=url, ref="main", ahead=ahead)
    mirror_fetch(url=url)  # a local branch's checkout makes no mirror: other refs do
    data = Path(settings.DATA_DIR)
    for path in (data / "sandboxes", data / "sandboxes" / STAGING, data / "mirrors"):
        assert subdirs_spread_flag(path), path


@both_shapes
def test_mirrors_are_reused_and_refreshed_and_never_run_hooks(origin):
    url = f"file://{origin}"
    mirror = mirror_fetch(url=url)
    marker = Path(settings.DATA_DIR) / "hook-ran"
    for hook in ("reference-transaction", "post-checkout", "pre-auto-gc"):
        path = mirror / "hooks" / hook
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!/bin/sh\ntouch {marker}\n")
        path.chmod(0o755)
    (origin / "VERSION").write_text("3\n")
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "v3", cwd=origin)
    assert mirror_fetch(url=url) == mirror
    assert commit_resolve(mirror=mirror, ref="main") == _sha(origin, "main")
    assert not marker.exists()


@both_shapes
@pytest.mark.parametrize("ref", ["--upload-pack=touch x", "main..other", "no-such-branch", ""])
def test_bad_refs_are_refused_naming_the_ref_field(origin, ref):
    mirror = mirror_fetch(url=f"file://{origin}")
    with pytest.raises(RepoUrlError) as caught:
        commit_resolve(mirror=mirror, ref=ref)
    assert caught.value.field == "ref"


@both_shapes
def test_refs_resolve_as_git_reads_them_loose_packed_tags_and_ambiguous_names(origin):
    mirror = mirror_fetch(url=f"file://{origin}")  # a new mirror: its refs are packed
    c = "-c", "user.name=t", "-c", "user.email=t@t"
    _git("tag", "-a", "-m", "t", "v1", "main~1", cwd=origin)
    _git("branch", "feature/x", "main~1", cwd=origin)
    _git("branch", "v1", "main", cwd=origin)  # a branch and a tag both named v1: the tag wins
    _git("checkout", "-q", "-b", "later", cwd=origin)
    (origin / "VERSION").write_text("later\n")
    _git(*c, "commit", "-qam", "later", cwd=origin)
    mirror_fetch(url=f"file://{origin}")  # fetched refs are loose files
    for ref in ("main", "feature/x", "v1", "later", "main~1", "later^", _sha(origin, "main")):
        assert commit_resolve(mirror=mirror, ref=ref) == _sha(origin, f"{ref}^{{commit}}"), ref


@both_shapes
def test_a_mirror_fetched_since_a_given_time_is_not_fetched_again(origin):
    url = f"file://{origin}"
    mirror = mirror_fetch(url=url)
    fetched = (mirror.with_suffix(".fetched")).stat().st_mtime
    (origin / "VERSION").write_text("3\n")
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "v3", cwd=origin)
    assert mirror_fetch(url=url, fresh_after=fetched) == mirror  # same attempt: as it was
    assert commit_resolve(mirror=mirror, ref="main") == _sha(origin, "main~1")
    mirror_fetch(url=url, fresh_after=fetched + 3600)  # a later attempt: fetches
    assert commit_resolve(mirror=mirror, ref="main") == _sha(origin, "main")
