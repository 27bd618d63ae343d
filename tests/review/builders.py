"""Campaign, run and variant rows built directly (the pipeline is tested in tests/campaigns)."""

import hashlib
import itertools

from django.utils import timezone

from campaigns.models import (
    Campaign,
    CampaignState,
    RepoRun,
    Repository,
    RunState,
    Validation,
    Variant,
    VariantState,
)

_seq = itertools.count(1)


def patch_for(path: str, old: str, new: str, *, line: int = 1, blob: str = "1111111") -> bytes:
    return (
        f"diff --git a/{path} b/{path}\nindex {blob}..2222222 100644\n--- a/{path}\n+++ b/{path}\n"
        f"@@ -{line} +{line} @@\n-{old}\n+{new}\n"
    ).encode()


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


def variant_make(*, run, name, patch: bytes, position=0, validation=Validation.PASSED, **kw):
    return Variant.objects.create(
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


def variant_rerun(variant, patch: bytes) -> None:
    """What a retry does to a variant: a new diff in the same row."""
    Variant.objects.filter(pk=variant.pk).update(
        patch=patch, diff_sha256=hashlib.sha256(patch).hexdigest()
    )
    variant.refresh_from_db()
