"""JSON read strictly: an object naming a key twice is refused, naming where (`json.loads`
keeps the last value silently, so a reader and a reviewer of the same text could differ)."""

from __future__ import annotations

import json
from typing import Any


class DuplicateKeyError(ValueError):
    """`path` (`spec.variants[0].env.A`) is named twice in its object."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: duplicate key")
        self.path = path


class _Duplicated(dict):
    """An object that named `key` twice, marked for `json_loads_strict` to find its path."""

    key: str


def _object(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    marked = _Duplicated(out)
    marked.key = next(k for k, _ in pairs if k in seen or seen.add(k))
    return marked


def _duplicate_path(data: Any) -> str | None:
    """The path of the first key named twice (in document order). Iterative, as depth is the
    parser's business."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, _Duplicated):
            return f"{where}.{value.key}" if where else value.key
        if isinstance(value, dict):
            items = [(item, f"{where}.{key}" if where else key) for key, item in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(item, f"{where}[{i}]") for i, item in enumerate(value)]))
    return None


def json_loads_strict(text: str | bytes) -> Any:
    """`json.loads`, raising `DuplicateKeyError` for a key named twice in one object."""
    found = False

    def object_pairs(pairs: list[tuple[str, Any]]) -> dict:
        nonlocal found
        out = _object(pairs)
        found = found or isinstance(out, _Duplicated)
        return out

    data = json.loads(text, object_pairs_hook=object_pairs)
    if found:
        raise DuplicateKeyError(_duplicate_path(data) or "")
    return data
