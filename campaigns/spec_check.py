"""The spec checker's building blocks: field errors, the error carrying them, and a checker
that records every problem with its path and line instead of stopping at the first."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.errors import Invalid

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
BRANCH_MAX = 250  # review.Changeset.branch
BRANCH_CHARS = re.compile(r"[\w./-]+\Z")  # what review.publish pushes
STEP_KEYS = {"run", "name", "timeout_s"}
# `changeset.author` as git takes it: a name and one email, nothing else (review.publish).
AUTHOR_RE = re.compile(r"^\s*(?P<name>[^<>\n]+?)\s*<(?P<email>[^<>\s]+)>\s*\Z")


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


def field_path(parent: str, key: str | int) -> str:
    """`parent.key`, or `parent[i]` for a list index."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


class SpecChecker:
    """Checks values field by field, collecting every failure (with its line) in `errors`."""

    def __init__(self, lines: dict[str, int]) -> None:
        self.lines = lines
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message, self.lines.get(path)))

    def mapping(self, value: Any, path: str, keys: set[str]) -> dict | None:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {kind_name(value)}")
            return None
        for key in value:
            if key not in keys:
                self.fail(
                    field_path(path, key),
                    f"unknown key (expected one of {', '.join(sorted(keys))})",
                )
        return value

    def string(self, value: Any, path: str, *, max_len: int = 10_000, allow_empty=False) -> str:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {kind_name(value)}")
            return ""
        if not allow_empty and not value.strip():
            self.fail(path, "must not be empty")
        if len(value) > max_len:
            self.fail(path, f"must be at most {max_len} characters")
        return value

    def integer(self, value: Any, path: str, *, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {kind_name(value)}")
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
                self.fail(field_path(path, key), "not a valid environment variable name")
        return {k: str(v) for k, v in value.items()}

    def steps(self, value: Any, path: str) -> list[dict]:
        """A step is `{run: CMD, timeout_s: N}` or just a command string; one or a list."""
        items = value if isinstance(value, list) else [value]
        out = []
        for i, item in enumerate(items):
            sub = field_path(path, i) if isinstance(value, list) else path
            if isinstance(item, str):
                item = {"run": item}
            step = self.mapping(item, sub, STEP_KEYS)
            if step is None:
                continue
            if "run" not in step:
                self.fail(field_path(sub, "run"), "is required")
                continue
            run = self.string(step["run"], field_path(sub, "run"), max_len=20_000)
            clean = {"run": run}
            if "name" in step:
                clean["name"] = self.string(step["name"], field_path(sub, "name"), max_len=100)
            if "timeout_s" in step:
                clean["timeout_s"] = self.integer(
                    step["timeout_s"], field_path(sub, "timeout_s"), low=1, high=86_400
                )
            out.append(clean)
        return out


def branch_name_problem(name: str) -> str | None:
    """Why git (`git check-ref-format --branch`) or Convoy's publish would refuse `name` as a
    branch, or None."""
    if len(name) > BRANCH_MAX:
        return f"must be at most {BRANCH_MAX} characters"
    if name.startswith("-"):
        return "must not start with '-'"
    if name in ("@", "HEAD"):
        return f"{name!r} is not a branch name"
    if not BRANCH_CHARS.match(name):
        return "use letters, digits, '_', '.', '-' and '/' (no spaces or ~^:?*[\\)"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "must not start or end with '/' or contain '//'"
    if ".." in name or name.endswith("."):
        return "must not contain '..' or end with '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "no part between '/' may start with '.' or end with '.lock'"
    return None


def author_split(text: str) -> tuple[str, str] | None:
    """A `"Name <email>"` author's (name, email), or None when it is not one."""
    m = AUTHOR_RE.match(text or "")
    return (m.group("name"), m.group("email")) if m else None


def kind_name(value: Any) -> str:
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
