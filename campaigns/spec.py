"""Campaign spec parsing: YAML or JSON in, a normalised dict out, or errors naming field and line.

Every problem is reported as `path: message (line N)`, e.g. `variants[1].env: must be a
mapping of strings (line 12)`. Parsing is pure: it never touches the database (the service adds
the checks that need it: a unique name, secrets that exist).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.conf import settings

from agents.spec import model_spec_errors
from campaigns.spec_check import (
    ENV_NAME_RE,
    CampaignSpecError,
    FieldError,
    SpecChecker,
    author_split,
    branch_name_problem,
    field_path,
    kind_name,
)
from campaigns.spec_fields import (
    DEFAULT_LIMITS,
    check_environment,
    check_gpu,
    check_limits,
    check_model,
    check_network,
    check_repos,
    check_review,
    check_variants,
)
from campaigns.spec_yaml import spec_load
from core.text import data_text_problems

__all__ = [
    "MAX_SPEC_BYTES",
    "CampaignSpecError",
    "FieldError",
    "ParsedSpec",
    "spec_dump",
    "spec_parse",
    "spec_validate",
]

MAX_SPEC_BYTES = 1024 * 1024  # a spec with its files; larger input is refused before parsing
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}\Z")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\Z")

TOP_KEYS = {
    "name",
    "description",
    "repos",
    "backend",
    "limits",
    "max_parallel",
    "files",
    "setup",
    "transform",
    "variants",
    "validate",
    "secrets",
    "model",
    "changeset",
    "review",
    "network",
    "image",
    "baseline",
    "diff",
}
REQUIRED_KEYS = ("name", "repos", "transform")
CHANGESET_KEYS = {"branch", "title", "body", "commit_message", "author"}


@dataclass
class ParsedSpec:
    data: dict
    lines: dict[str, int] = field(default_factory=dict)
    source: str = ""


def spec_validate(raw: Any, *, lines: dict[str, int] | None = None) -> dict:
    """Validate already-loaded data (YAML or JSON); return the normalised spec."""
    c = SpecChecker(lines or {})
    if not isinstance(raw, dict):
        c.fail(
            "",
            f"the spec must be a mapping of fields (name, repos, transform…), got {kind_name(raw)}",
        )
        raise CampaignSpecError(c.errors)
    # NUL or a lone surrogate in any string: no column stores it, and a path or an argument
    # with NUL cannot be used; refused before any check passes the string on.
    for path, message in data_text_problems(raw):
        c.fail(path or "spec", message)
    if c.errors:
        raise CampaignSpecError(c.errors)
    for key in raw:
        if key not in TOP_KEYS:
            c.fail(key, f"unknown key (expected one of {', '.join(sorted(TOP_KEYS))})")
    for key in REQUIRED_KEYS:
        if key not in raw:
            c.fail(key, "is required")

    spec: dict[str, Any] = {}
    if "name" in raw:
        spec["name"] = c.string(raw["name"], "name", max_len=100)
        if spec["name"] and not NAME_RE.match(spec["name"]):
            c.fail("name", "must be a slug: lowercase letters, digits and '-'")
    spec["description"] = (
        c.string(raw["description"], "description", allow_empty=True)
        if "description" in raw
        else ""
    )
    if "repos" in raw:
        spec["repos"] = check_repos(c, raw["repos"])
    spec["backend"] = settings.SANDBOX_BACKEND
    allowed = [b for b in settings.SANDBOX_BACKENDS if b != "process"]
    if settings.ALLOW_UNSAFE_PROCESS_BACKEND:
        allowed.append("process")
    if "backend" in raw:
        if raw["backend"] not in allowed:
            c.fail("backend", f"must be one of {', '.join(allowed)}")
        else:
            spec["backend"] = raw["backend"]
    spec["limits"] = check_limits(c, raw["limits"]) if "limits" in raw else dict(DEFAULT_LIMITS)
    spec["network"] = check_network(c, raw)
    if spec["limits"].get("gpu"):
        check_gpu(c, spec["backend"], allowed)
    spec["max_parallel"] = settings.MAX_PARALLEL_REPOS
    if "max_parallel" in raw:
        spec["max_parallel"] = c.integer(raw["max_parallel"], "max_parallel", low=1, high=1000)
    spec["files"] = {}
    if "files" in raw:
        files = raw["files"]
        if not isinstance(files, dict):
            c.fail("files", "must be a mapping of file name to content")
        else:
            for name, content in files.items():
                path = field_path("files", name)
                if not FILE_NAME_RE.match(name) or name in (".", ".."):
                    c.fail(path, "must be a plain file name (no '/' or '..')")
                elif not isinstance(content, str):
                    c.fail(path, f"must be the file's text, got {kind_name(content)}")
                else:
                    spec["files"][name] = content
    for key in ("setup", "validate"):
        spec[key] = c.steps(raw[key], key) if key in raw and raw[key] is not None else []
    if "transform" in raw:
        spec["transform"] = c.steps(raw["transform"], "transform")
        if not spec["transform"] and not c.errors:
            c.fail("transform", "must have at least one step")
    spec["variants"] = (
        check_variants(c, raw["variants"])
        if "variants" in raw
        else [{"name": "default", "env": {}}]
    )
    spec["secrets"] = []
    if "secrets" in raw:
        secrets = raw["secrets"]
        if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
            c.fail("secrets", "must be a list of secret names")
        else:
            for i, name in enumerate(secrets):
                if not ENV_NAME_RE.match(name):
                    c.fail(field_path("secrets", i), "not a valid environment variable name")
            spec["secrets"] = list(dict.fromkeys(secrets))
    spec["changeset"] = {}
    if "changeset" in raw:
        changeset = c.mapping(raw["changeset"], "changeset", CHANGESET_KEYS)
        for key, value in (changeset or {}).items():
            if key in CHANGESET_KEYS:
                spec["changeset"][key] = c.string(
                    value, field_path("changeset", key), allow_empty=True
                )
        branch = spec["changeset"].get("branch")
        if branch and (problem := branch_name_problem(branch)):
            c.fail("changeset.branch", problem)
        author = spec["changeset"].get("author")
        if author and author_split(author) is None:
            c.fail("changeset.author", 'expected "Name <email>", as git names an author')
    spec["review"] = check_review(c, raw, validated=bool(spec["validate"]))
    check_environment(c, raw, spec)
    spec["model"] = check_model(c, raw["model"], "model") if raw.get("model") else None
    for where, message in model_spec_errors(spec):
        c.fail(where, message)
    if c.errors:
        raise CampaignSpecError(c.errors)
    return spec


def spec_parse(text: str | bytes) -> ParsedSpec:
    """Parse YAML (or JSON) text into a validated spec; raise CampaignSpecError otherwise."""
    size = len(text)
    if size > MAX_SPEC_BYTES:
        raise CampaignSpecError(
            [FieldError("", f"the spec is {size:,} bytes; the limit is {MAX_SPEC_BYTES:,}")]
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise CampaignSpecError([FieldError("", "the spec must be UTF-8 text")]) from None
    raw, lines = spec_load(text)
    return ParsedSpec(data=spec_validate(raw, lines=lines), lines=lines, source=text)


def spec_dump(spec: dict) -> str:
    """The normalised spec as YAML, for showing and editing."""
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)
