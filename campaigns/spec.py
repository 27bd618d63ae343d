"""Campaign spec parsing: YAML or JSON in, a normalised dict out, or errors naming field and line.

Every problem is reported as `path: message (line N)`, e.g. `variants[1].env: must be a
mapping of strings (line 12)`. Parsing is pure: it never touches the database (the service adds
the checks that need it: a unique name, secrets that exist).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.conf import settings
from django.utils.module_loading import import_string

from agents.spec import model_parse, model_spec_errors
from core.errors import Invalid
from sandboxes.backends import BACKENDS
from sandboxes.backends.base import Capability
from sandboxes.egress.policy import network_parse
from sandboxes.images.spec import image_spec_parse
from sandboxes.repos import RepoUrlError, repo_url_validate

MAX_SPEC_BYTES = 1024 * 1024  # a spec with its files; larger input is refused before parsing
MAX_YAML_NODES = 50_000  # guards against alias bombs that expand a small text into millions
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
VARIANT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
GPU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}(:[1-9][0-9]?)?$")  # "T4", "A10G:2", "H100:8"

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
LIMIT_KEYS = {"timeout_s", "cpu", "memory_mb", "network", "max_diff_mb", "gpu", "egress_mb"}
STEP_KEYS = {"run", "name", "timeout_s"}
VARIANT_KEYS = {"name", "description", "env", "transform", "model"}
REPO_KEYS = {"url", "ref"}
CHANGESET_KEYS = {"branch", "title", "body", "commit_message", "author"}
REVIEW_KEYS = {"four_eyes"}
DEFAULT_MAX_DIFF_MB = 5
DEFAULT_LIMITS = {"timeout_s": 900, "cpu": 1.0, "memory_mb": 1024, "egress_mb": 1024}


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path or 'spec'}: {self.message}{where}"


class CampaignSpecError(Invalid):
    """The spec is invalid; `errors` lists every problem found, each with its field path."""

    code = "invalid_spec"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("Invalid campaign spec: " + "; ".join(str(e) for e in errors))
        self.errors = errors

    def as_list(self) -> list[dict]:
        return [{"path": e.path, "message": e.message, "line": e.line} for e in self.errors]

    def as_body(self) -> dict:
        errors = [
            {"field": e.path or "spec", "message": e.message, "line": e.line} for e in self.errors
        ]
        return {"detail": self.message, "code": self.code, "errors": errors}


@dataclass
class ParsedSpec:
    data: dict
    lines: dict[str, int] = field(default_factory=dict)
    source: str = ""


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


# --- YAML with line numbers -----------------------------------------------------------------


class _Composer:
    """Turns composed YAML nodes into plain data, remembering each path's line."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.lines: dict[str, int] = {}
        self.nodes = 0

    def build(self, node: yaml.Node, path: str) -> Any:
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise CampaignSpecError([FieldError("", "too many YAML nodes (alias expansion?)")])
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            out: dict = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise CampaignSpecError(
                        [
                            FieldError(
                                path, f"keys must be strings, got {key!r}", self._line(key_node)
                            )
                        ]
                    )
                sub = _path(path, key)
                if key in out:
                    raise CampaignSpecError(
                        [FieldError(sub, "duplicate key", self._line(key_node))]
                    )
                out[key] = self.build(value_node, sub)
                self.lines.setdefault(sub, self._line(key_node))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, _path(path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    @staticmethod
    def _line(node: yaml.Node) -> int:
        return node.start_mark.line + 1


MAX_DEPTH = 32


def _depth_check(text: str) -> None:
    """Refuse nesting no campaign needs before a parser recurses into it."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    indent = max((len(line) - len(line.lstrip(" -")) for line in text.splitlines()), default=0)
    if deepest > MAX_DEPTH or indent > MAX_DEPTH * 8:
        raise CampaignSpecError([FieldError("", f"nested deeper than {MAX_DEPTH} levels")])


def _load(text: str) -> tuple[Any, dict[str, int]]:
    _depth_check(text)
    stripped = text.lstrip()
    if stripped.startswith("{") and stripped.rstrip().endswith("}"):
        try:
            return json.loads(text), {}
        except ValueError:
            pass  # YAML flow mappings look alike; let the YAML parser judge
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, {}
        composer = _Composer(loader)
        return composer.build(node, ""), composer.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "cannot be parsed"
        raise CampaignSpecError([FieldError("", f"invalid YAML: {problem}", line)]) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise CampaignSpecError([FieldError("", f"invalid YAML: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()


# --- validation -----------------------------------------------------------------------------


class _Checker:
    def __init__(self, lines: dict[str, int]) -> None:
        self.lines = lines
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message, self.lines.get(path)))

    def mapping(self, value: Any, path: str, keys: set[str]) -> dict | None:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {_kind(value)}")
            return None
        for key in value:
            if key not in keys:
                self.fail(
                    _path(path, key), f"unknown key (expected one of {', '.join(sorted(keys))})"
                )
        return value

    def string(self, value: Any, path: str, *, max_len: int = 10_000, allow_empty=False) -> str:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_kind(value)}")
            return ""
        if not allow_empty and not value.strip():
            self.fail(path, "must not be empty")
        if len(value) > max_len:
            self.fail(path, f"must be at most {max_len} characters")
        return value

    def integer(self, value: Any, path: str, *, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {_kind(value)}")
            return None
        if not low <= value <= high:
            self.fail(path, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def env(self, value: Any, path: str) -> dict[str, str]:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            self.fail(path, "must be a mapping of strings")
            return {}
        for key in value:
            if not ENV_NAME_RE.match(key):
                self.fail(_path(path, key), "not a valid environment variable name")
        return {k: str(v) for k, v in value.items()}

    def steps(self, value: Any, path: str) -> list[dict]:
        """A step is `{run: CMD, timeout_s: N}` or just a command string; one or a list."""
        items = value if isinstance(value, list) else [value]
        out = []
        for i, item in enumerate(items):
            sub = _path(path, i) if isinstance(value, list) else path
            if isinstance(item, str):
                item = {"run": item}
            step = self.mapping(item, sub, STEP_KEYS)
            if step is None:
                continue
            if "run" not in step:
                self.fail(_path(sub, "run"), "is required")
                continue
            run = self.string(step["run"], _path(sub, "run"), max_len=20_000)
            clean = {"run": run}
            if "name" in step:
                clean["name"] = self.string(step["name"], _path(sub, "name"), max_len=100)
            if "timeout_s" in step:
                clean["timeout_s"] = self.integer(
                    step["timeout_s"], _path(sub, "timeout_s"), low=1, high=86_400
                )
            out.append(clean)
        return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _check_repos(c: _Checker, value: Any) -> Any:
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
        return out
    if not isinstance(value, list):
        c.fail("repos", f"must be a list of {{url, ref}} or {{tag: NAME}}, got {_kind(value)}")
        return None
    if not value:
        c.fail("repos", "must list at least one repository")
    out, seen = [], set()
    for i, item in enumerate(value):
        path = _path("repos", i)
        if isinstance(item, str):
            item = {"url": item}
        repo = c.mapping(item, path, REPO_KEYS)
        if repo is None:
            continue
        if "url" not in repo:
            c.fail(_path(path, "url"), "is required")
            continue
        url = c.string(repo["url"], _path(path, "url"), max_len=1000)
        try:
            url = repo_url_validate(url) if url else url
        except RepoUrlError as exc:
            c.fail(_path(path, "url"), exc.message)
            continue
        if url in seen:
            c.fail(_path(path, "url"), "listed twice")
        seen.add(url)
        entry = {"url": url}
        if "ref" in repo:
            entry["ref"] = c.string(repo["ref"], _path(path, "ref"), max_len=200)
            if entry["ref"].startswith("-"):
                c.fail(_path(path, "ref"), "must not start with '-'")
        out.append(entry)
    return out


def _check_limits(c: _Checker, value: Any) -> dict:
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


def _check_gpu(c: _Checker, backend: str, allowed: list[str]) -> None:
    """A GPU only on a backend whose capability flags offer one; the message names those that do."""
    if _offers_gpu(backend):
        return
    offering = [name for name in allowed if _offers_gpu(name)]
    where = f"use backend: {' or '.join(offering)}" if offering else "none is configured here"
    c.fail("limits.gpu", f"the {backend} backend offers no GPUs; {where}")


def _offers_gpu(backend: str) -> bool:
    try:
        return Capability.GPU in import_string(BACKENDS[backend]).capabilities
    except (KeyError, ImportError):  # unknown here, or not installed: it offers nothing
        return False


def _check_network(c: _Checker, raw: dict) -> str | dict:
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
        return network_parse(raw["network"], field_name="network").as_spec()
    except Invalid as exc:
        c.fail(exc.field or "network", exc.message)
        return "none"


def _check_variants(c: _Checker, value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        c.fail("variants", "must be a non-empty list of {name, env}")
        return []
    if len(value) > 20:
        c.fail("variants", "at most 20 variants")
    out, seen = [], {}
    for i, item in enumerate(value):
        path = _path("variants", i)
        variant = c.mapping(item, path, VARIANT_KEYS)
        if variant is None:
            continue
        if "name" not in variant:
            c.fail(_path(path, "name"), "is required")
            continue
        name = c.string(variant["name"], _path(path, "name"), max_len=100)
        if name and not VARIANT_NAME_RE.match(name):
            c.fail(_path(path, "name"), "use letters, digits, '.', '_' and '-'")
        if name in seen:
            c.fail(
                _path(path, "name"),
                f"duplicate variant name {name!r} (also variants[{seen[name]}])",
            )
        seen[name] = i
        clean = {"name": name, "env": {}}
        if "description" in variant:
            clean["description"] = c.string(
                variant["description"], _path(path, "description"), allow_empty=True
            )
        if "env" in variant:
            clean["env"] = c.env(variant["env"], _path(path, "env"))
        if "transform" in variant:
            clean["transform"] = c.steps(variant["transform"], _path(path, "transform"))
        if "model" in variant:
            clean["model"] = _check_model(c, variant["model"], _path(path, "model"))
        out.append(clean)
    return out


def _check_model(c: _Checker, value: Any, path: str) -> dict:
    """`model:` (agents.spec): a provider, a model name and budgets."""
    model, errors = model_parse(value, path=path)
    for where, message in errors:
        c.fail(where, message)
    return model


def spec_validate(raw: Any, *, lines: dict[str, int] | None = None) -> dict:
    """Validate already-loaded data (YAML or JSON); return the normalised spec."""
    c = _Checker(lines or {})
    if not isinstance(raw, dict):
        c.fail(
            "", f"the spec must be a mapping of fields (name, repos, transform…), got {_kind(raw)}"
        )
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
        spec["repos"] = _check_repos(c, raw["repos"])
    spec["backend"] = settings.SANDBOX_BACKEND
    allowed = [b for b in settings.SANDBOX_BACKENDS if b != "process"]
    if settings.ALLOW_UNSAFE_PROCESS_BACKEND:
        allowed.append("process")
    if "backend" in raw:
        if raw["backend"] not in allowed:
            c.fail("backend", f"must be one of {', '.join(allowed)}")
        else:
            spec["backend"] = raw["backend"]
    spec["limits"] = _check_limits(c, raw["limits"]) if "limits" in raw else dict(DEFAULT_LIMITS)
    spec["network"] = _check_network(c, raw)
    if spec["limits"].get("gpu"):
        _check_gpu(c, spec["backend"], allowed)
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
                path = _path("files", name)
                if not FILE_NAME_RE.match(name) or name in (".", ".."):
                    c.fail(path, "must be a plain file name (no '/' or '..')")
                elif not isinstance(content, str):
                    c.fail(path, f"must be the file's text, got {_kind(content)}")
                else:
                    spec["files"][name] = content
    for key in ("setup", "validate"):
        spec[key] = c.steps(raw[key], key) if key in raw and raw[key] is not None else []
    if "transform" in raw:
        spec["transform"] = c.steps(raw["transform"], "transform")
        if not spec["transform"] and not c.errors:
            c.fail("transform", "must have at least one step")
    spec["variants"] = (
        _check_variants(c, raw["variants"])
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
                    c.fail(_path("secrets", i), "not a valid environment variable name")
            spec["secrets"] = list(dict.fromkeys(secrets))
    spec["changeset"] = {}
    if "changeset" in raw:
        changeset = c.mapping(raw["changeset"], "changeset", CHANGESET_KEYS)
        for key, value in (changeset or {}).items():
            if key in CHANGESET_KEYS:
                spec["changeset"][key] = c.string(value, _path("changeset", key), allow_empty=True)
    spec["review"] = {"four_eyes": True}
    if "review" in raw:
        review = c.mapping(raw["review"], "review", REVIEW_KEYS)
        if review and "four_eyes" in review:
            if not isinstance(review["four_eyes"], bool):
                c.fail("review.four_eyes", "must be true or false")
            else:
                spec["review"]["four_eyes"] = review["four_eyes"]
    _check_environment(c, raw, spec)
    spec["model"] = _check_model(c, raw["model"], "model") if raw.get("model") else None
    for where, message in model_spec_errors(spec):
        c.fail(where, message)
    if c.errors:
        raise CampaignSpecError(c.errors)
    return spec


def _check_environment(c: _Checker, raw: dict, spec: dict) -> None:
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
    for i, glob in enumerate((diff or {}).get("exclude") or []):
        text = c.string(glob, f"diff.exclude[{i}]", max_len=300)
        if "\n" in text or text.startswith("#"):
            c.fail(f"diff.exclude[{i}]", "must be one gitignore pattern")
        elif text:
            spec["diff"]["exclude"].append(text)
    limits = raw.get("limits")
    if isinstance(limits, dict) and "max_diff_mb" in limits:
        most = c.integer(limits["max_diff_mb"], "limits.max_diff_mb", low=1, high=100)
        spec["diff"]["max_mb"] = most or DEFAULT_MAX_DIFF_MB


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
    raw, lines = _load(text)
    return ParsedSpec(data=spec_validate(raw, lines=lines), lines=lines, source=text)


def spec_dump(spec: dict) -> str:
    """The normalised spec as YAML, for showing and editing."""
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)
