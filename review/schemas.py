"""Request and response bodies of the review API (`review/api.py`), with explicit fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from ninja import Field, Schema
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError


def _variant_ref_check(value):
    """Refuse what is neither an id nor a name before the union tries each member: a float
    was refused as `variant.int` and `variant.str`, naming fields nobody sent."""
    if value is None or (isinstance(value, int | str) and not isinstance(value, bool)):
        return value
    raise PydanticCustomError(
        "variant_ref", "must be a variant's id (a whole number) or its name (text)"
    )


VariantRef = Annotated[int | str, BeforeValidator(_variant_ref_check)]


class PickIn(Schema):
    variant: VariantRef = Field(..., description="Variant id or name")
    diff_hash: str = Field(..., min_length=64, max_length=64, description="sha256 you reviewed")


class ApproveIn(Schema):
    diff_hash: str = Field(..., min_length=64, max_length=64)
    variant: VariantRef | None = Field(None, description="Pick this variant and approve it")
    comment: str = Field("", max_length=5000)
    publish_hash: str = Field(
        ...,
        min_length=64,
        max_length=64,
        description="`publish_hash` of the run's review as you read it (the title, body, commit "
        "message and author to publish): refused (409) if that text changed since",
    )


class RejectIn(Schema):
    comment: str = Field(..., min_length=1, max_length=5000)
    diff_hash: str = Field("", max_length=64)


class BulkApproveIn(Schema):
    group_key: str = Field(..., min_length=64, max_length=64)
    variant_name: str = Field(..., min_length=1, max_length=100)
    run_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(
        ..., min_length=1, max_length=5000
    )
    # Each run's diff as the client was shown it (`GroupOut.diff_hashes`): a run whose diff
    # changed since (a rerun) is skipped, never approved unseen.
    diff_hashes: dict[
        Annotated[int, Field(ge=1, le=2**63 - 1)], Annotated[str, Field(max_length=64)]
    ] = Field(..., max_length=5000)
    comment: str = Field("", max_length=5000)
    publish_hash: str = Field(
        ...,
        min_length=64,
        max_length=64,
        description="The runs' `publish_hash` as read (see ApproveIn)",
    )


class RunSkippedOut(Schema):
    run_id: int
    reason: str


class BulkApproveOut(Schema):
    approved: list[int]
    skipped: list[RunSkippedOut]
    # Runs of the group that review.require kept out of bulk approval, and why (regresses, …).
    held_back: int
    held_back_by: dict[str, int]


class PublishApprovedOut(Schema):
    queued: list[int]
    refused: list[RunSkippedOut]


class PublishTextOut(Schema):
    title: str
    body: str
    commit_message: str
    author: str
    branch: str = Field("", description="The branch pushed (empty for texts bound before it was)")


class ReviewOut(Schema):
    run_id: int
    state: str
    approved: bool
    variant: str | None
    picked_hash: str
    approved_hash: str
    comment: str
    decided_by: str | None
    decided_at: datetime | None
    publish_text: PublishTextOut = Field(
        ..., description="What publishing would say now; an approval binds it"
    )
    publish_hash: str
    publish_text_changes: list[str] = Field(
        ..., description="changeset.* fields changed since the approval: approve again"
    )


class ChangesetOut(Schema):
    id: int
    run_id: int
    repository: str
    branch: str
    state: str
    checks: str
    commit: str
    pr_number: int | None
    pr_url: str
    diff_hash: str
    publish_text: PublishTextOut | None = Field(
        ..., description="The text pushed with it, bound when publishing was requested"
    )
    error: str
    published_at: datetime | None
    refreshed_at: datetime | None

    @staticmethod
    def resolve_repository(obj) -> str:
        return obj.run.repository.name


# review.selectors.QUEUE_FILTERS' keys: the queue page's filters.
QueueFilter = Literal["todo", "approved", "text_changed", "rejected", "published", "all"]


class QueueVariantOut(Schema):
    name: str
    state: str
    validation: str
    diff_sha256: str
    files_changed: int
    insertions: int
    deletions: int


class QueueRowOut(Schema):
    run_id: int
    repository: str
    status: str = Field(
        ...,
        description="unreviewed, picked, approved, rejected, needs re-approval, published, or "
        "'approved, text changed: needs approval' (a revision changed the text to publish "
        "since the approval: approve it again)",
    )
    suggested: str | None = Field(None, description="The variant the page suggests")
    variants: list[QueueVariantOut]

    @staticmethod
    def resolve_run_id(obj) -> int:
        return obj.run.pk

    @staticmethod
    def resolve_repository(obj) -> str:
        return obj.run.repository.name

    @staticmethod
    def resolve_suggested(obj) -> str | None:
        return obj.suggested.name if obj.suggested is not None else None


class QueuePageOut(Schema):
    count: int
    items: list[QueueRowOut]


class ChangesetPageOut(Schema):
    count: int
    items: list[ChangesetOut]


class GroupOut(Schema):
    group_key: str
    count: int
    variant_name: str
    diff_sha256: str
    run_ids: list[int]
    diff_hashes: dict[int, str]
    publish_hash: str = Field(
        ..., description="The text to publish shown with the group: send it with the approval"
    )
    repositories: list[str]
    files: list[str]
    summary: str
    near_group_keys: list[str]

    @staticmethod
    def resolve_diff_sha256(obj) -> str:
        return obj.sample.diff_sha256

    @staticmethod
    def resolve_run_ids(obj) -> list[int]:
        return [r.pk for r in obj.runs]

    @staticmethod
    def resolve_diff_hashes(obj) -> dict[int, str]:
        """Each listed run's diff hash: send them back with the bulk approval."""
        return {run.pk: diff_hash for run, diff_hash in obj.members}

    @staticmethod
    def resolve_near_group_keys(obj) -> list[str]:
        """Near-identical groups (same files, a few lines apart), closest first."""
        return [other.group_key for other, _lines in obj.near]

    @staticmethod
    def resolve_repositories(obj) -> list[str]:
        return [r.repository.name for r in obj.runs]
