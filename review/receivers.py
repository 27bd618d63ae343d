"""Review's answers to signals from lower layers (campaigns never imports review)."""

from campaigns.signals import DiffRow
from review.digests import variant_digest_row, variant_digest_store


def variant_digest_on_diff_stored(
    sender, *, variant_id: int, campaign_id: int, patch: bytes, diff_sha256: str, **kwargs
) -> None:
    """Group a new diff for bulk review as it is stored, in the storing transaction."""
    variant_digest_store(
        variant_id=variant_id, campaign_id=campaign_id, patch=bytes(patch), diff_sha256=diff_sha256
    )


def variant_digest_rows_on_diff(
    sender, *, variant_id: int, campaign_id: int, patch: bytes, diff_sha256: str, **kwargs
) -> list[DiffRow]:
    """The same digest, as the row to write in the statement that stores the diff."""
    return [
        variant_digest_row(
            variant_id=variant_id,
            campaign_id=campaign_id,
            patch=bytes(patch),
            diff_sha256=diff_sha256,
        )
    ]
