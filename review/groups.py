"""Bulk-review groups as a reviewer reads them: a change's label and its near-identical groups.

Works on `review.diffs.diff_changes` values (per file: path, status, "+added"/"-removed"
lines), which digests store when a diff is written, so pages compare groups without parsing.
"""

from __future__ import annotations

from collections import Counter

# Two groups are near-identical when they change the same files, differ in at most this many
# lines, and share at least half as many lines as tell them apart.
NEAR_MAX_LINES = 6
SUMMARY_PART = 60


def change_files(changes: list) -> list[str]:
    return [path for path, _status, _lines in changes]


def _short(line: str) -> str:
    text = " ".join(line[1:].split())
    return text if len(text) <= SUMMARY_PART else text[: SUMMARY_PART - 1] + "…"


def change_summary(changes: list) -> str:
    """One line saying what the change does, from its first edited lines and its size."""
    added = sum(1 for _p, _s, lines in changes for x in lines if x.startswith("+"))
    removed = sum(1 for _p, _s, lines in changes for x in lines if x.startswith("-"))
    size = f"+{added} \u2212{removed} in {len(changes)} file{'s' if len(changes) != 1 else ''}"
    for path, status, lines in changes:
        old = next((x for x in lines if x.startswith("-") and x[1:].strip()), None)
        new = next((x for x in lines if x.startswith("+") and x[1:].strip()), None)
        name = path.rsplit("/", 1)[-1]
        if old and new:
            return f"{name}: “{_short(old)}” → “{_short(new)}” ({size})"
        if new:
            return f"{name}: adds “{_short(new)}” ({size})"
        if old:
            return f"{name}: removes “{_short(old)}” ({size})"
        if status != "modified":
            return f"{name}: {status.split(' ', 1)[0]} ({size})"
    return size


def change_lines(changes: list) -> Counter:
    """The change as a multiset of (path, "+line" / "-line")."""
    return Counter((path, line) for path, _status, lines in changes for line in lines)


def change_difference(a: list, b: list) -> set[tuple[str, str]]:
    """Lines of change `a` that change `b` does not make."""
    return set(change_lines(a) - change_lines(b))


def _shape(changes: list) -> tuple:
    return tuple((path, status) for path, status, _lines in changes)


def near_identical(a: list, b: list) -> int | None:
    """How many lines tell two changes apart when they are near-identical, else None."""
    if not a or not b or _shape(a) != _shape(b):
        return None
    la, lb = change_lines(a), change_lines(b)
    differing = sum(((la - lb) + (lb - la)).values())
    common = sum((la & lb).values())
    if 0 < differing <= NEAR_MAX_LINES and 2 * common >= differing:
        return differing
    return None
