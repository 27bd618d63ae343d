"""Text a database column can hold: no NUL characters (PostgreSQL refuses them in text) and
no lone surrogates (which cannot be encoded as UTF-8). Checked at the edges, naming the field.
And text shown as it is not seen: invisible and bidi characters marked where diffs and logs
are displayed."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

NUL_MESSAGE = "must not contain NUL characters"
SURROGATE_MESSAGE = "must be valid Unicode text (it contains a lone surrogate)"


def nul_shown(value: str) -> str:
    """`value` with each NUL as its symbol (U+2400), so that output a command printed can be
    stored (PostgreSQL text cannot hold NUL) and still shows where the NUL was."""
    return value.replace("\x00", "\u2400") if "\x00" in value else value


# Characters that change how code reads without showing ("Trojan Source"): bidi controls and
# every other format character (category Cf: zero-width spaces and joiners, word joiner, BOM,
# soft hyphen, tags), plus the blank fillers and separators that render as nothing.
_INVISIBLE_EXTRA = "\u115f\u1160\u3164\uffa0\u2028\u2029"


@lru_cache(maxsize=1)
def _invisible_re() -> re.Pattern:
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
    chars += list(_INVISIBLE_EXTRA)
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


def has_invisible(text: str) -> bool:
    return bool(_invisible_re().search(text))


def mark_invisible(html: str) -> str:
    """`html` (already escaped: a diff, a log line) with each invisible or bidi character
    replaced by a visible marker naming its code point: the marker is ours, the code point is
    hex."""
    return _invisible_re().sub(
        lambda m: (
            f'<span class="invisible-char" title="U+{ord(m[0]):04X}">⟨U+{ord(m[0]):04X}⟩</span>'
        ),
        html,
    )


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
