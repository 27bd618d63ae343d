"""API shapes for campaigns, runs, variants, repositories and secrets."""

from datetime import datetime
from typing import Any

from ninja import Schema


class CampaignIn(Schema):
    """Either `yaml` (the spec as YAML or JSON text) or `spec` (the same structure as JSON)."""

    yaml: str | None = None
    spec: dict[str, Any] | None = None


class SpecErrorOut(Schema):
    detail: str
    errors: list[dict]


class CampaignOut(Schema):
    id: int
    name: str
    description: str
    state: str
    backend: str
    max_parallel: int
    four_eyes: bool
    owner: str
    created_at: datetime
    launched_at: datetime | None
    finished_at: datetime | None
    variants: list[str]
    runs: dict[str, int]


class CampaignDetailOut(CampaignOut):
    spec: dict[str, Any]
    counts: dict[str, Any]
    clusters: list[dict]


class RetryIn(Schema):
    signature: str | None = None


class RetryOut(Schema):
    retried: int
    run_ids: list[int]


class VariantOut(Schema):
    id: int
    name: str
    state: str
    validation: str
    attempt: int
    sandbox_id: int | None
    files_changed: int
    insertions: int
    deletions: int
    diffstat: list[dict]
    diff_sha256: str
    duration_ms: int | None
    error: str
    output_tail: str


class VariantDetailOut(VariantOut):
    diff: str
    patch_truncated: bool


class RunOut(Schema):
    id: int
    repository: str
    repository_id: int
    url: str
    ref: str
    state: str
    attempt: int
    base_commit: str
    error_signature: str
    error_summary: str
    started_at: datetime | None
    finished_at: datetime | None
    variants: list[VariantOut] = []


class RunDetailOut(RunOut):
    error: str
    variants_detail: list[VariantDetailOut]


class RunsPageOut(Schema):
    count: int
    items: list[RunOut]


class RepositoryIn(Schema):
    url: str
    ref: str = "HEAD"
    tags: list[str] = []


class RepositoryOut(Schema):
    id: int
    url: str
    name: str
    default_ref: str
    tags: list[str]


class SecretIn(Schema):
    name: str
    value: str


class SecretOut(Schema):
    name: str
    created_at: datetime
    rotated_at: datetime | None
