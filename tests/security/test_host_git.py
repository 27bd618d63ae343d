"""Host-side git never runs code a repository supplies: hooks, fsmonitor, filter drivers.

Each repository here is armed: plain git on it would write the canary file (the first test
proves the traps work). Publishing to it, mirroring it and checking it out for a sandbox must
leave the canary absent.
"""

import subprocess
from pathlib import Path

import pytest
from django.test import override_settings

from review.publish import change_push
from sandboxes.local_clone import clone_local
from sandboxes.repos import clone_at, commit_resolve, mirror_fetch
from sandboxes.repos import git as repos_git
from tests.factories import git, remote_with_change

pytestmark = pytest.mark.shapes("embedded", "production")

HOOKS = (
    "pre-receive", "update", "post-receive", "post-update", "reference-transaction",
    "push-to-checkout", "pre-commit", "post-checkout", "post-merge", "pre-push",
    "post-commit", "commit-msg", "pre-auto-gc", "fsmonitor-watchman",
)  # fmt: skip


def _arm(repo: Path, canary: Path, *, gitdir: Path | None = None) -> None:
    """Hooks, fsmonitor, a filter driver, a diff driver and an alternate-refs command in the
    repository's own config and hooks directory, each writing to `canary`."""
    gitdir = gitdir or repo
    hooks = gitdir / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in HOOKS:
        (hooks / name).write_text(f"#!/bin/sh\necho {name} >> {canary}\ncat >/dev/null\n")
        (hooks / name).chmod(0o755)
    run = f"sh -c 'echo $0 >> {canary}; cat'"
    with open(gitdir / "config", "a") as config:
        config.write(
            f"[core]\n\tfsmonitor = {run} fsmonitor\n"
            f"\talternateRefsCommand = {run} alternates\n"
            f"\tsshCommand = {run} ssh\n"
            f'[filter "trap"]\n\tclean = {run} clean\n\tsmudge = {run} smudge\n'
            f'[diff "trap"]\n\ttextconv = {run} textconv\n\tcommand = {run} diffcmd\n'
            "[receive]\n\tdenyCurrentBranch = updateInstead\n"
            f"[uploadpack]\n\tpackObjectsHook = {run} packhook\n"
        )


@pytest.fixture
def armed(tmp_path):
    canary = tmp_path / "canary"
    bare, base, patch = remote_with_change(
        tmp_path,
        before={".gitattributes": "* filter=trap diff=trap\n", "app.py": "x = 1\n"},
        after={".gitattributes": "* filter=trap diff=trap\n", "app.py": "x = 2\n"},
    )
    _arm(bare, canary)
    return bare, base, patch, canary


def test_the_traps_fire_under_plain_git(armed, tmp_path):
    bare, _base, _patch, canary = armed
    work = tmp_path / "plain"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    (work / "app.py").write_text("x = 3\n")
    subprocess.run(
        ["git", "-c", "user.name=a", "-c", "user.email=a@x", "commit", "-qam", "x"],
        cwd=work,
        check=True,
        capture_output=True,
    )
    subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/x"], cwd=work, check=True)
    assert "pre-receive" in canary.read_text()


def test_publishing_to_an_armed_local_remote_runs_none_of_its_code(armed):
    bare, base, patch, canary = armed
    pushed = change_push(
        remote_url=f"file://{bare}",
        base_commit=base,
        base_ref="main",
        patch=patch,
        branch="convoy/safe",
        message="m",
    )
    assert git(bare, "rev-parse", "convoy/safe").decode().strip() == pushed.commit
    assert not canary.exists(), canary.read_text()


def test_publishing_to_a_checked_out_branch_of_a_non_bare_remote_is_refused_not_checked_out(
    tmp_path,
):
    """updateInstead in the remote's config would check the pushed files out through its
    filter drivers; receive-pack runs with denyCurrentBranch=refuse instead."""
    canary = tmp_path / "canary"
    _bare, base, patch = remote_with_change(
        tmp_path,
        before={".gitattributes": "* filter=trap\n", "app.py": "x = 1\n"},
        after={".gitattributes": "* filter=trap\n", "app.py": "x = 2\n"},
    )
    work = tmp_path / "work"
    git(work, "checkout", "-q", "-B", "convoy/live", base)
    _arm(work, canary, gitdir=work / ".git")
    with pytest.raises(Exception, match="refus"):
        change_push(
            remote_url=f"file://{work}",
            base_commit=base,
            base_ref="main",
            patch=patch,
            branch="convoy/live",
            message="m",
            replaces=base,  # as if Convoy had pushed it: the receiving side must refuse
        )
    assert not canary.exists(), canary.read_text()


def test_mirroring_and_checking_out_an_armed_repository_runs_none_of_its_code(
    armed, tmp_path, settings
):
    bare, _base, _patch, canary = armed
    with override_settings(REPO_ROOTS=[tmp_path], DATA_DIR=tmp_path / "data"):
        mirror = mirror_fetch(url=f"file://{bare}")
        mirror = mirror_fetch(url=f"file://{bare}")  # the second time fetches
        sha = commit_resolve(mirror=mirror, ref="main")
        dest = tmp_path / "checkout"
        clone_at(mirror=mirror, sha=sha, dest=dest)
    assert (dest / "app.py").read_text() == "x = 1\n"
    assert not canary.exists(), canary.read_text()


def test_cloning_an_armed_local_repository_straight_in_runs_none_of_its_code(
    armed, tmp_path, monkeypatch
):
    """A run's checkout of a local repository's branch is one `git clone` straight from it
    (sandboxes/local_clone.py). The repository's `.gitattributes` names a `trap` filter and
    the worker's own environment defines it and a hooks directory: plain git would run them
    while checking out (the clone's config is git's own); `git_run` reads none of it."""
    bare, _base, _patch, canary = armed
    trap = tmp_path / "trap.sh"
    trap.write_text(f"#!/bin/sh\necho smudge >> {canary}\ncat\n")
    trap.chmod(0o755)
    monkeypatch.setenv(
        "GIT_CONFIG_PARAMETERS",
        f"'filter.trap.smudge'='{trap}' 'core.hookspath'='{bare / 'hooks'}'",
    )
    dest = tmp_path / "checkout"
    dest.mkdir()
    sha = clone_local(git=repos_git, source=bare, ref="main", dest=dest)
    assert sha is not None  # the direct clone was made, not the mirror's path
    assert (dest / "app.py").read_text() == "x = 1\n"
    assert not canary.exists(), canary.read_text()


def test_host_git_ignores_the_callers_git_environment(armed, tmp_path, monkeypatch):
    """A GIT_DIR, GIT_CONFIG_PARAMETERS or hooks in the worker's own environment do not leak in."""
    bare, base, patch, canary = armed
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.hookspath'='{bare / 'hooks'}'")
    monkeypatch.setenv("GIT_DIR", str(bare))
    change_push(
        remote_url=f"file://{bare}",
        base_commit=base,
        base_ref="main",
        patch=patch,
        branch="convoy/env",
        message="m",
    )
    assert not canary.exists(), canary.read_text()


def _repo_with_commit(path: Path) -> str:
    git(path.parent, "init", "-q", "-b", "main", str(path))
    (path / "a.txt").write_text("a\n")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    return git(path, "rev-parse", "HEAD").decode().strip()


def test_a_repository_that_borrows_from_others_on_this_host_is_refused(settings, tmp_path):
    """Files committed inside a repository's working tree (`evil/HEAD`, `evil/objects/info/
    alternates`, `evil/refs` as a link) make `file://…/proj/evil` a git directory that borrows
    the objects and refs of any repository on the host: a checkout copied them into a sandbox,
    and a publish pushed into them."""
    from sandboxes.repos import RepoUrlError, repo_url_validate

    root = tmp_path / "roots"
    root.mkdir()
    settings.REPO_ROOTS = [str(root)]
    outside = tmp_path / "outside"
    _repo_with_commit(outside)
    proj = root / "proj"
    _repo_with_commit(proj)
    evil = proj / "evil"
    (evil / "objects" / "info").mkdir(parents=True)
    (evil / "HEAD").write_text("ref: refs/heads/main\n")
    (evil / "objects" / "info" / "alternates").write_text(f"{outside}/.git/objects\n")
    (evil / "refs").symlink_to(outside / ".git" / "refs")
    with pytest.raises(RepoUrlError, match="inside another repository's working tree"):
        repo_url_validate(f"file://{evil}")
    # The same git directory at the top level: refused for what it borrows.
    top = root / "top"
    evil.rename(top)
    with pytest.raises(RepoUrlError, match="symbolic link"):
        repo_url_validate(f"file://{top}")
    (top / "refs").unlink()
    (top / "refs").mkdir()
    with pytest.raises(RepoUrlError, match="outside CONVOY_REPO_ROOTS"):
        repo_url_validate(f"file://{top}")
    # A repository of its own is fine.
    assert repo_url_validate(f"file://{proj}") == f"file://{proj}"


def test_host_git_does_not_follow_a_servers_redirect(tmp_path):
    """A server behind a checked URL answered with a redirect to the loopback's (or the private
    network's) git server, and git followed it: the mirror filled from there."""
    import http.server
    import threading

    from core.git import GitError, git_run

    seen = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    target = http.server.HTTPServer(("127.0.0.1", 0), Target)

    class Redirect(Target):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{target.server_port}{self.path}")
            self.end_headers()

    redirect = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    servers = [target, redirect]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{redirect.server_port}/repo.git"
        with pytest.raises(GitError):  # http allowed here only to serve the test locally
            git_run("-c", "protocol.http.allow=always", "ls-remote", url)
        assert seen == []
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_mirrors_first_clone_connects_to_the_checked_addresses(monkeypatch):
    """Only the mirror's later fetches were pinned to the addresses the URL's host was checked
    at; its first clone let git look the name up again (a DNS answer changed in between reached
    the loopback's git server)."""
    from sandboxes import repos
    from sandboxes.backends.base import SandboxError

    monkeypatch.setattr(repos, "host_addresses_vet", lambda host, strict: ["203.0.113.7"])
    calls = []

    def recorded(*args, **kwargs):  # records the command; connects nowhere
        calls.append(args)
        raise SandboxError("recorded")

    monkeypatch.setattr(repos, "git", recorded)
    with pytest.raises(SandboxError):
        repos.mirror_fetch(url="https://git.example.org/team/app.git")
    assert calls and "clone" in calls[0]
    assert "http.curloptResolve=git.example.org:443:203.0.113.7" in calls[0]


def test_host_git_sees_none_of_the_workers_secrets(monkeypatch):
    """Every host git (and the ssh, curl and upload-pack it starts) got the worker's whole
    environment: the database's URL, providers' keys, the code host's token."""
    from core.git import git_run

    monkeypatch.setenv("DATABASE_URL", "postgres://convoy:db-password-77@db/convoy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-77")
    seen = git_run("-c", "alias.showenv=!env", "showenv").decode()
    assert "PATH=" in seen and "GIT_CONFIG_NOSYSTEM=1" in seen
    assert "db-password-77" not in seen and "aws-secret-77" not in seen
