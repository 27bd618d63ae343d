"""Checks of the spec's field families: repos, limits and GPUs, network, variants and their
models, and the environment (image, baseline, diff)."""

from __future__ import annotations

import re
from typing import Any

from django.utils.module_loading import import_string

from agents.spec import model_parse
from campaigns.spec_check import SpecChecker, field_path, kind_name
from core.errors import Invalid
from sandboxes.backends import BACKENDS
from sandboxes.backends.base import Capability
from sandboxes.egress.policy import network_parse, reserved_refuse
from sandboxes.images.spec import image_spec_parse
from sandboxes.repos import RepoUrlError, repo_url_validate

VARIANT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
GPU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}(:[1-9][0-9]?)?\Z")  # "T4", "A10G:2", "H100:8"
LIMIT_KEYS = {"timeout_s", "cpu", "memory_mb", "network", "max_diff_mb", "gpu", "egress_mb"}
VARIANT_KEYS = {"name", "description", "env", "transform", "model"}
REPO_KEYS = {"url", "ref"}
DEFAULT_MAX_DIFF_MB = 5
REVIEW_KEYS = {"four_eyes", "require"}
# Which validation outcomes bulk approval accepts (review.require); see README, "Review".
REVIEW_REQUIRE = ("passes_or_fixes", "passes", "any")
DEFAULT_LIMITS = {"timeout_s": 900, "cpu": 1.0, "memory_mb": 1024, "egress_mb": 1024}


def check_repos(c: SpecChecker, value: Any) -> Any:
    if isinstance(value, dict):
        spec = c.mapping(value, "repos", {"tag", "ref"})
        if spec is None:
            return None
        if "tag" not in spec:
            c.fail("repos.tag", "is required when repos is a mapping (or give a list of {url})")
            return None
        out = {"tag": c.string(spec["tag"], "repos.tag", max_len=100)}
        if "ref" in spec:
            out["ref"] = c.string(spec["ref"], "repos.ref", max_len=200)
            if out["ref"].startswith("-"):
                c.fail("repos.ref", "must not start with '-'")
        return out
    if not isinstance(value, list):
        c.fail("repos", f"must be a list of {{url, ref}} or {{tag: NAME}}, got {kind_name(value)}")
        return None
    if not value:
        c.fail("repos", "must list at least one repository")
    out, seen = [], set()
    for i, item in enumerate(value):
        path = field_path("repos", i)
        if isinstance(item, str):
            item = {"url": item}
        repo = c.mapping(item, path, REPO_KEYS)
        if repo is None:
            continue
        if "url" not in repo:
            c.fail(field_path(path, "url"), "is required")
            continue
        url = c.string(repo["url"], field_path(path, "url"), max_len=1000)
        try:
            url = repo_url_validate(url) if url else url
        except RepoUrlError as exc:
            c.fail(field_path(path, "url"), exc.message)
            continue
        if url in seen:
            c.fail(field_path(path, "url"), "listed twice")
        seen.add(url)
        entry = {"url": url}
        if "ref" in repo:
            entry["ref"] = c.string(repo["ref"], field_path(path, "ref"), max_len=200)
            if entry["ref"].startswith("-"):
                c.fail(field_path(path, "ref"), "must not start with '-'")
        out.append(entry)
    return out


def check_limits(c: SpecChecker, value: Any) -> dict:
    limits = dict(DEFAULT_LIMITS)
    spec = c.mapping(value, "limits", LIMIT_KEYS)
    if spec is None:
        return limits
    if "timeout_s" in spec:
        limits["timeout_s"] = c.integer(spec["timeout_s"], "limits.timeout_s", low=10, high=86_400)
    if "memory_mb" in spec:
        limits["memory_mb"] = c.integer(spec["memory_mb"], "limits.memory_mb", low=64, high=65_536)
    if "cpu" in spec:
        cpu = spec["cpu"]
        if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not 0.1 <= cpu <= 64:
            c.fail("limits.cpu", "must be a number of CPUs between 0.1 and 64")
        else:
            limits["cpu"] = float(cpu)
    if "egress_mb" in spec:
        most = c.integer(spec["egress_mb"], "limits.egress_mb", low=1, high=1_048_576)
        limits["egress_mb"] = most or DEFAULT_LIMITS["egress_mb"]
    if "gpu" in spec:
        gpu = spec["gpu"]
        if not isinstance(gpu, str) or not GPU_RE.match(gpu):
            c.fail("limits.gpu", "must be a GPU type with an optional count, e.g. T4 or A10G:2")
        else:
            limits["gpu"] = gpu
    return limits


def check_gpu(c: SpecChecker, backend: str, allowed: list[str]) -> None:
    """A GPU only on a backend whose capability flags offer one; the message names those that do."""
    if offers_gpu(backend):
        return
    offering = [name for name in allowed if offers_gpu(name)]
    where = f"use backend: {' or '.join(offering)}" if offering else "none is configured here"
    c.fail("limits.gpu", f"the {backend} backend offers no GPUs; {where}")


def offers_gpu(backend: str) -> bool:
    try:
        return Capability.GPU in import_string(BACKENDS[backend]).capabilities
    except (KeyError, ImportError):  # unknown here, or not installed: it offers nothing
        return False


def check_network(c: SpecChecker, raw: dict) -> str | dict:
    """`network:` (none, or {allow, package_indexes}: sandboxes.egress.policy), normalised.
    The old `limits.network: none` still means none; `limits.network: open` is refused."""
    limits = raw.get("limits")
    old = limits.get("network") if isinstance(limits, dict) else None
    if old is not None and old != "none":
        c.fail(
            "limits.network",
            f"{old!r} is no longer accepted: the top-level `network:` field replaces "
            "limits.network, and a sandbox reaches only the hosts it names, e.g. "
            "network: {allow: [api.example.com], package_indexes: true}",
        )
    elif old is not None and "network" in raw:
        c.fail("limits.network", "give the network once: the top-level `network:` replaces it")
    if raw.get("network") is None:
        return "none"
    try:
        policy = network_parse(raw["network"], field_name="network")
        reserved_refuse(policy, field_name="network")
        return policy.as_spec()
    except Invalid as exc:
        c.fail(exc.field or "network", exc.message)
        return "none"


def check_variants(c: SpecChecker, value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        c.fail("variants", "must be a non-empty list of {name, env}")
        return []
    if len(value) > 20:
        c.fail("variants", "at most 20 variants")
    out, seen = [], {}
    for i, item in enumerate(value):
        path = field_path("variants", i)
        variant = c.mapping(item, path, VARIANT_KEYS)
        if variant is None:
            continue
        if "name" not in variant:
            c.fail(field_path(path, "name"), "is required")
            continue
        name = c.string(variant["name"], field_path(path, "name"), max_len=100)
        if name and not VARIANT_NAME_RE.match(name):
            c.fail(field_path(path, "name"), "use letters, digits, '.', '_' and '-'")
        if name in seen:
            c.fail(
                field_path(path, "name"),
                f"duplicate variant name {name!r} (also variants[{seen[name]}])",
            )
        seen[name] = i
        clean = {"name": name, "env": {}}
        if "description" in variant:
            clean["description"] = c.string(
                variant["description"], field_path(path, "description"), allow_empty=True
            )
        if "env" in variant:
            clean["env"] = c.env(variant["env"], field_path(path, "env"))
        if "transform" in variant:
            clean["transform"] = c.steps(variant["transform"], field_path(path, "transform"))
        if "model" in variant:
            clean["model"] = check_model(c, variant["model"], field_path(path, "model"))
        out.append(clean)
    return out


def check_model(c: SpecChecker, value: Any, path: str) -> dict:
    """`model:` (agents.spec): a provider, a model name and budgets."""
    model, errors = model_parse(value, path=path)
    for where, message in errors:
        c.fail(where, message)
    return model


def check_environment(c: SpecChecker, raw: dict, spec: dict) -> None:
    """`image:` (sandboxes.images.spec, normalised), `baseline:` and `diff:` (docs/images.md)."""
    spec["image"] = None
    if raw.get("image") is not None:
        try:
            canonical = image_spec_parse(raw["image"], where="image").canonical()
            spec["image"] = {k: v for k, v in canonical.items() if k != "kind"}  # re-parsable
        except Invalid as exc:
            c.fail(exc.field or "image", exc.message)
    spec["baseline"] = True
    if "baseline" in raw:
        if not isinstance(raw["baseline"], bool):
            c.fail("baseline", "must be true or false")
        else:
            spec["baseline"] = raw["baseline"]
    spec["diff"] = {"exclude": [], "max_mb": DEFAULT_MAX_DIFF_MB}
    diff = c.mapping(raw["diff"], "diff", {"exclude"}) if "diff" in raw else None
    exclude = (diff or {}).get("exclude") or []
    if not isinstance(exclude, list):
        # A string was read letter by letter (`*` among them: every diff empty), a mapping
        # by its keys, a number crashed.
        c.fail("diff.exclude", f"must be a list of gitignore patterns, got {kind_name(exclude)}")
        exclude = []
    for i, glob in enumerate(exclude):
        text = c.string(glob, f"diff.exclude[{i}]", max_len=300)
        if "\n" in text or text.startswith("#"):
            c.fail(f"diff.exclude[{i}]", "must be one gitignore pattern")
        elif text:
            spec["diff"]["exclude"].append(text)
    limits = raw.get("limits")
    if isinstance(limits, dict) and "max_diff_mb" in limits:
        most = c.integer(limits["max_diff_mb"], "limits.max_diff_mb", low=1, high=100)
        spec["diff"]["max_mb"] = most or DEFAULT_MAX_DIFF_MB


def check_review(c: SpecChecker, raw: dict, *, validated: bool) -> dict:
    """`review:` the four-eyes rule and `require`, the outcomes bulk approval accepts."""
    review = {"four_eyes": True, "require": REVIEW_REQUIRE[0]}
    given = c.mapping(raw["review"], "review", REVIEW_KEYS) if "review" in raw else None
    if not given:
        return review
    if "four_eyes" in given:
        if not isinstance(given["four_eyes"], bool):
            c.fail("review.four_eyes", "must be true or false")
        else:
            review["four_eyes"] = given["four_eyes"]
    if "require" in given:
        require = given["require"]
        if require not in REVIEW_REQUIRE:
            got = repr(require) if isinstance(require, str) else kind_name(require)
            c.fail("review.require", f"must be one of {', '.join(REVIEW_REQUIRE)}, got {got}")
        elif require == "passes" and not validated:
            c.fail(
                "review.require",
                "passes needs validate steps: without them no variant passes, so bulk approval "
                "would hold every change back (use passes_or_fixes or any)",
            )
        else:
            review["require"] = require
    return review
