"""API shapes for campaigns, runs, variants, repositories and secrets.

Every 2xx answer of campaigns/api.py is one of the `*Out` schemas here; those that combine a row
with computed values (counts, clusters, a run's variants) are built by their `build` methods.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Schema
from pydantic import ConfigDict, Field

from campaigns.models import Campaign, RepoRun, Variant
from core.errors import Invalid
from core.text import text_problem


class CampaignIn(Schema):
    """Either `yaml` (the spec as YAML or JSON text) or `spec` (the same structure as JSON)."""

    yaml: str | None = None
    spec: dict[str, Any] | None = None


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

    @classmethod
    def fields_of(cls, campaign: Campaign, *, runs: dict[str, int]) -> dict[str, Any]:
        return {
            "id": campaign.pk,
            "name": campaign.name,
            "description": campaign.description,
            "state": campaign.state,
            "backend": campaign.backend,
            "max_parallel": campaign.max_parallel,
            "four_eyes": campaign.four_eyes,
            "owner": campaign.owner.username,
            "created_at": campaign.created_at,
            "launched_at": campaign.launched_at,
            "finished_at": campaign.finished_at,
            "variants": campaign.variant_names,
            "runs": runs,
        }

    @classmethod
    def build(cls, campaign: Campaign, *, runs: dict[str, int]) -> CampaignOut:
        """The campaign with its runs by state (from `selectors.campaigns_counts`)."""
        return cls(**cls.fields_of(campaign, runs=runs))


class CampaignDetailOut(CampaignOut):
    spec: dict[str, Any]
    counts: dict[str, Any]
    clusters: list[dict]

    @classmethod
    def build(cls, campaign: Campaign, *, counts: dict, clusters: list[dict]) -> CampaignDetailOut:
        """The campaign with `selectors.campaign_counts` and `selectors.error_clusters`."""
        return cls(
            **cls.fields_of(campaign, runs=counts["runs"]),
            spec=campaign.spec,
            counts=counts,
            clusters=clusters,
        )


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class RetryIn(Schema):
    # A misspelt key ({"signatur": …}) must not read as "no signature": that retries every
    # failed run.
    model_config = ConfigDict(extra="forbid")

    signature: str | None = None

    @classmethod
    def from_request(cls, request: HttpRequest) -> RetryIn:
        """The body, which is optional: none (or an empty form) stands for no signature.
        Anything but `{"signature": …}` (or a form with only `signature`) is refused: read as
        "no signature", it retried every failed run. Read by hand because ninja refuses an
        empty body outright."""
        expected = 'expected a JSON body {"signature": "<error signature>"} (or no body)'
        if request.content_type in FORM_TYPES:
            if set(request.POST) - {"signature"}:
                raise Invalid(expected, field="signature")
            data = {"signature": request.POST["signature"]} if "signature" in request.POST else {}
            return cls(**data)
        if not request.body.strip():
            return cls()
        if request.content_type != "application/json":
            raise Invalid(expected, field="signature")
        try:
            retry = cls.model_validate_json(request.body)
        except ValueError:
            raise Invalid(expected, field="signature") from None
        if retry.signature is not None and (problem := text_problem(retry.signature)):
            raise Invalid(problem, field="signature")
        return retry

    @classmethod
    def openapi_body(cls) -> dict:
        """`openapi_extra` documenting the optional body."""
        schema = cls.model_json_schema()
        content = {"application/json": {"schema": schema}}
        return {"requestBody": {"required": False, "content": content}}


class RetryOut(Schema):
    retried: int
    run_ids: list[int]


class VariantOut(Schema):
    id: int
    name: str
    state: str
    validation: str
    outcome: str  # against the run's baseline: passes, fixes, still_failing, regresses, fails
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
    baseline: str  # validation of the untouched repository: passed, failed, skipped or ""
    image_key: str
    error_signature: str
    error_summary: str
    started_at: datetime | None
    finished_at: datetime | None
    variants: list[VariantOut] = []

    @classmethod
    def fields_of(cls, run: RepoRun, variants: list[Variant]) -> dict[str, Any]:
        for v in variants:
            v.run = run  # Variant.outcome reads the run's baseline: no query per variant
        return {
            "id": run.pk,
            "repository": run.repository.name,
            "repository_id": run.repository_id,
            "url": run.repository.url,
            "ref": run.ref,
            "state": run.state,
            "attempt": run.attempt,
            "base_commit": run.base_commit,
            "baseline": run.baseline,
            "image_key": run.image_key,
            "error_signature": run.error_signature,
            "error_summary": run.error_summary,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "variants": [VariantOut.model_validate(v) for v in variants],
        }

    @classmethod
    def build(cls, run: RepoRun, variants: list[Variant]) -> RunOut:
        """The run (its repository loaded) with its variants' outcomes (no diffs)."""
        return cls(**cls.fields_of(run, variants))


class RunDetailOut(RunOut):
    error: str
    variants_detail: list[VariantDetailOut]

    @classmethod
    def build(cls, run: RepoRun, variants: list[Variant], diffs: dict[int, str]) -> RunDetailOut:
        """The run with its error and every variant's diff, as `diffs` has it (by variant id:
        `secret_grants.variant_diffs_for_display`, masked where flagged)."""
        return cls(
            **cls.fields_of(run, variants),
            error=run.error,
            variants_detail=[
                VariantDetailOut(
                    **VariantOut.model_validate(v).model_dump(),
                    diff=diffs[v.pk],
                    patch_truncated=v.patch_truncated,
                )
                for v in variants
            ],
        )


class RunsPageOut(Schema):
    count: int
    items: list[RunOut]


class RepositoryIn(Schema):
    # The column sizes (campaigns.models.Repository) and the spec checker's limits.
    url: str = Field(max_length=1000)
    ref: str = Field("HEAD", max_length=200)
    tags: list[Annotated[str, Field(max_length=100)]] = Field([], max_length=50)


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
