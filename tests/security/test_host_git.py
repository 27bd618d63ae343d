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
