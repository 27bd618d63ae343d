"""Test data, built in one place.

Users by role; generated repositories and campaign specs that the real pipeline runs; and
campaign, run and variant rows built directly for review tests. Like the pipeline, storing a
diff sends `campaigns.signals.variant_diff_stored` (review keeps its bulk-review digest from
it). `campaign_bulk_make` inserts in bulk and sends nothing: the pages it serves do not group
diffs.
"""

import hashlib
import itertools
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from accounts.services import user_create
from campaigns.demo import demo_repos_create
from campaigns.models import (
    Campaign,
    CampaignState,
    RepoRun,
    Repository,
    RunState,
    RunTransition,
    Validation,
    Variant,
    VariantState,
)
from campaigns.services import repositories_register
from campaigns.signals import variant_diff_stored
from tests.support import wait_for

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"


def user_make(*, role: str | None, username: str | None = None) -> User:
    username = username or f"{role or 'outsider'}{next(_seq)}"
    if role is None:
        return User.objects.create_user(username=username, password=PASSWORD)
    return user_create(username=username, role=role, password=PASSWORD)


def repos_make(count: int, *, tag: str | None = None) -> tuple[str, list[Path]]:
    """`count` demo repositories in a fresh directory, registered with a fresh tag."""
    tag = tag or f"t{uuid.uuid4().hex[:8]}"
    root = Path(settings.REPO_ROOTS[0]) / tag
    paths = demo_repos_create(root, count)
    repositories_register(
        entries=[{"url": f"file://{p}", "ref": "main"} for p in paths], tags=[tag], actor=None
    )
    return tag, paths


def spec_for(tag: str, *, name: str, backend: str = "bwrap", extra: str = "", **fields) -> str:
    """The demo spec aimed at `tag`, with a name, backend and optional overrides."""
    from campaigns.demo import DEMO_SPEC

    spec = DEMO_SPEC.replace("name: assert-equal-cleanup", f"name: {name}\nbackend: {backend}")
    spec = spec.replace("repos: {tag: demo}", f"repos: {{tag: {tag}}}")
    for key, value in fields.items():
        spec = "\n".join(
            f"{key}: {value}" if line.startswith(f"{key}:") else line for line in spec.splitlines()
        )
    return spec + extra


def runs_final(campaign, *, timeout: float = 180) -> None:
    def done():
        return not RepoRun.objects.filter(
            campaign=campaign, state__in=[RunState.PENDING, RunState.QUEUED, RunState.RUNNING]
        ).exists()

    wait_for(done, timeout=timeout, interval=0.2, what=f"every run of {campaign.name} to finish")


def campaign_completed(campaign, *, timeout: float = 180) -> None:
    """Every run final, then the campaign marked completed."""
    runs_final(campaign, timeout=timeout)
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED,
        timeout=30,
        what="campaign completed",
    )


def patch_for(path: str, old: str, new: str, *, line: int = 1, blob: str = "1111111") -> bytes:
    return (
        f"diff --git a/{path} b/{path}\nindex {blob}..2222222 100644\n--- a/{path}\n+++ b/{path}\n"
        f"@@ -{line} +{line} @@\n-{old}\n+{new}\n"
    ).encode()


def git(cwd, *args) -> bytes:
    """Run git on the host for test fixtures, with hooks and user/system config out of play."""
    return subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"},
    ).stdout


def remote_with_change(
    root: Path, *, before: dict[str, str | bytes], after: dict[str, str | bytes]
) -> tuple[Path, str, bytes]:
    """A bare repository whose main holds `before`, its commit, and the binary patch to `after`."""
    bare = root / "remote.git"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    work = root / "work"
    git(root, "clone", "-q", str(bare), str(work))

    def _write(files):
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (work / name).write_bytes(data)

    _write(before)
    git(work, "add", ".")
    git(work, "-c", "user.name=A", "-c", "user.email=a@x", "commit", "-qm", "base")
    git(work, "push", "-q", "origin", "HEAD:main")
    base = git(work, "rev-parse", "HEAD").decode().strip()
    _write(after)
    git(work, "add", "-A")
    return bare, base, git(work, "diff", "--cached", "--binary", base)


def campaign_make(*, owner, launched_by=None, variants=("a", "b", "c"), four_eyes=True, **spec):
    n = next(_seq)
    return Campaign.objects.create(
        name=f"review-{n}",
        spec={
            "name": f"review-{n}",
            "variants": [{"name": v, "env": {}} for v in variants],
            "changeset": spec.get("changeset", {"branch": f"convoy/review-{n}"}),
        },
        state=CampaignState.RUNNING,
        backend="bubblewrap",
        owner=owner,
        launched_by=launched_by or owner,
        launched_at=timezone.now(),
        four_eyes=four_eyes,
    )


def run_make(*, campaign, url=None, base_commit="", state=RunState.SUCCEEDED, ref="main"):
    n = next(_seq)
    repo = Repository.objects.create(url=url or f"file:///srv/git/repo-{n}.git", name=f"repo-{n}")
    return RepoRun.objects.create(
        campaign=campaign, repository=repo, ref=ref, state=state, base_commit=base_commit
    )


def _diff_stored(variant) -> None:
    variant_diff_stored.send(
        sender=Variant,
        variant_id=variant.pk,
        campaign_id=variant.run.campaign_id,
        patch=bytes(variant.patch),
        diff_sha256=variant.diff_sha256,
    )


def variant_make(*, run, name, patch: bytes, position=0, validation=Validation.PASSED, **kw):
    with transaction.atomic():
        variant = Variant.objects.create(
            run=run,
            name=name,
            position=position,
            state=kw.pop("state", VariantState.COMPLETED),
            patch=patch,
            diff_sha256=hashlib.sha256(patch).hexdigest() if patch else "",
            files_changed=1 if patch else 0,
            insertions=1 if patch else 0,
            deletions=1 if patch else 0,
            validation=validation,
            duration_ms=1200,
            **kw,
        )
        _diff_stored(variant)
    return variant


def variant_rerun(variant, patch: bytes) -> None:
    """What a retry does to a variant: a new diff in the same row."""
    with transaction.atomic():
        Variant.objects.filter(pk=variant.pk).update(
            patch=patch, diff_sha256=hashlib.sha256(patch).hexdigest() if patch else ""
        )
        variant.refresh_from_db()
        _diff_stored(variant)


def campaign_bulk_make(*, owner, runs: int, variants=("a", "b", "c"), failed_every: int = 10):
    """A launched campaign with `runs` finished runs (bulk inserts), transitions and variants."""
    campaign = campaign_make(owner=owner, variants=variants)
    tag = campaign.name
    repos = Repository.objects.bulk_create(
        [
            Repository(url=f"file:///srv/git/{tag}/r{i}.git", name=f"{tag}-r{i}")
            for i in range(runs)
        ],
        batch_size=2000,
    )
    start = campaign.launched_at
    run_rows = []
    for i, repo in enumerate(repos):
        failed = failed_every and i % failed_every == failed_every - 1
        run_rows.append(
            RepoRun(
                campaign=campaign,
                repository=repo,
                ref="main",
                state=RunState.FAILED if failed else RunState.SUCCEEDED,
                base_commit="0" * 40,
                error="boom" if failed else "",
                error_signature=f"sig{i % 3}" if failed else "",
                error_summary=f"setup failed ({i % 3})" if failed else "",
                finished_at=start + timedelta(seconds=i),
            )
        )
    created = RepoRun.objects.bulk_create(run_rows, batch_size=2000)
    RunTransition.objects.bulk_create(
        [
            RunTransition(
                run=r,
                campaign=campaign,
                from_state="running",
                to_state=r.state,
                at=start + timedelta(seconds=k),
            )
            for k, r in enumerate(created)
        ],
        batch_size=2000,
    )
    variant_rows = []
    for k, r in enumerate(created):
        if r.state != RunState.SUCCEEDED:
            continue
        for pos, name in enumerate(variants):
            patch = patch_for("src/app.py", "old()", f"new_{name}()", line=k % 50 + 1)
            variant_rows.append(
                Variant(
                    run=r,
                    name=name,
                    position=pos,
                    state=VariantState.COMPLETED,
                    patch=patch,
                    diff_sha256=hashlib.sha256(patch).hexdigest(),
                    files_changed=1,
                    insertions=1,
                    deletions=1,
                    validation=Validation.FAILED if pos == 2 else Validation.PASSED,
                    output_tail="E   AssertionError" if pos == 2 else "",
                    duration_ms=1000 + pos,
                )
            )
    Variant.objects.bulk_create(variant_rows, batch_size=2000)
    return campaign
