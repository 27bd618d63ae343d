"""Text a database column can hold: no NUL characters (PostgreSQL refuses them in text) and
no lone surrogates (which cannot be encoded as UTF-8). Checked at the edges, naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

NUL_MESSAGE = "must not contain NUL characters"
SURROGATE_MESSAGE = "must be valid Unicode text (it contains a lone surrogate)"


def nul_shown(value: str) -> str:
    """`value` with each NUL as its symbol (U+2400), so that output a command printed can be
    stored (PostgreSQL text cannot hold NUL) and still shows where the NUL was."""
    return value.replace("\x00", "\u2400") if "\x00" in value else value


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None."""
    if "\x00" in value:
        return NUL_MESSAGE
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE_MESSAGE
    return None


def data_text_problems(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Each string (or mapping key) in nested JSON-like `data` that `text_problem` refuses,
    as (field path, message): `spec.variants[0].env.A`. Iterative: depth is the parser's
    business, not this walk's."""
    stack: list[tuple[Any, str]] = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if problem := text_problem(value):
                yield where, problem
        elif isinstance(value, dict):
            items = []
            for key, item in value.items():
                if isinstance(key, str) and (problem := text_problem(key)):
                    yield where, f"a key {problem}"  # the key itself is not echoed back
                    continue
                items.append((item, f"{where}.{key}" if where else str(key)))
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(item, f"{where}[{i}]") for i, item in enumerate(value)]))


def data_text_problem(data: Any, path: str = "") -> tuple[str, str] | None:
    """The first of `data_text_problems`, or None."""
    return next(data_text_problems(data, path), None)
