"""Bulk-review digests: each variant diff's change key and label, written when the diff is stored.

Called from `review/receivers.py` inside the transaction that stores the diff
(`campaigns.signals.variant_diff_stored`), so the bulk page and the groups API only read.
"""

from __future__ import annotations

from django.db.models import F, Q

from campaigns.models import Campaign, Variant, VariantState
from campaigns.signals import DiffRow
from review.diffs import CHANGE_LINES_KEPT, diff_changes, diff_group_key
from review.groups import change_files, change_summary
from review.models import VariantDigest


def digest_fields(patch: bytes) -> dict:
    """Group key, files, one-line summary and (when small enough) the change lines of a diff."""
    return {"group_key": diff_group_key(patch), **digest_shown(patch)}


def digest_shown(patch: bytes) -> dict:
    """What the bulk page and the groups API show of a diff: its files, one-line summary and
    (when small enough) change lines. `review.selectors.bulk_groups` computes them again from
    the masked patch for a flagged diff (masking the cut summary could miss a secret cut in two)."""
    changes = diff_changes(patch)
    lines = sum(len(c[2]) for c in changes)
    return {
        "files": change_files(changes)[:50],
        "summary": change_summary(changes)[:300],
        "changes": changes if lines <= CHANGE_LINES_KEPT else [],
    }


def variant_digest_row(
    *, variant_id: int, campaign_id: int, patch: bytes, diff_sha256: str
) -> DiffRow:
    """The digest row a variant's new diff gets: a variant that changed nothing has none (so it
    is in no group), and a rerun's diff replaces the earlier one's."""
    if not diff_sha256:
        return DiffRow(model=VariantDigest, key="variant", key_value=variant_id)
    fields = {"campaign_id": campaign_id, "diff_sha256": diff_sha256, **digest_fields(patch)}
    return DiffRow(
        model=VariantDigest,
        key="variant",
        key_value=variant_id,
        values={"variant_id": variant_id, **fields},
    )


def variant_digest_store(
    *, variant_id: int, campaign_id: int, patch: bytes, diff_sha256: str
) -> None:
    """Keep the digest of a variant's new diff (in the caller's transaction)."""
    row = variant_digest_row(
        variant_id=variant_id, campaign_id=campaign_id, patch=patch, diff_sha256=diff_sha256
    )
    if row.values is None:
        VariantDigest.objects.filter(variant_id=variant_id).delete()
        return
    # One upsert (INSERT ... ON CONFLICT) where update_or_create took two savepoints, a locking
    # read and a write: this runs once per stored diff.
    VariantDigest.objects.bulk_create(
        [VariantDigest(**row.values)],
        update_conflicts=True,
        unique_fields=["variant"],
        update_fields=[name for name in row.values if name != "variant_id"],
    )


def variant_digests_refresh(*, campaign: Campaign | None = None, batch: int = 500) -> int:
    """Backfill: compute the digest of every completed variant whose diff has none current.

    Diffs stored before digests were kept at write time need this once
    (`manage.py review_digests_backfill`); it returns how many digests it wrote.
    """
    variants = Variant.objects.filter(state=VariantState.COMPLETED).exclude(diff_sha256="")
    if campaign is not None:
        variants = variants.filter(run__campaign=campaign)
    done = 0
    while True:
        stale = list(
            variants.filter(Q(digest__isnull=True) | ~Q(digest__diff_sha256=F("diff_sha256")))
            .annotate(campaign_pk=F("run__campaign_id"))
            .only("pk", "patch", "diff_sha256")[:batch]
        )
        if not stale:
            return done
        VariantDigest.objects.bulk_create(
            [
                VariantDigest(
                    variant_id=v.pk,
                    campaign_id=v.campaign_pk,
                    diff_sha256=v.diff_sha256,
                    **digest_fields(bytes(v.patch)),
                )
                for v in stale
            ],
            update_conflicts=True,
            unique_fields=["variant"],
            update_fields=["diff_sha256", "group_key", "files", "summary", "changes"],
        )
        done += len(stale)
