"""Unified git diffs: parse into files and hunks, hash, normalise for bulk review, render safely.

Diffs come out of sandboxes and are untrusted: every string that reaches a page goes through
`escape()` or Pygments (which escapes), and the views mark only that output safe.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

from core.patches import (
    PatchError,
    patch_read,
    path_strip_prefix,
    path_unquote,
    paths_from_git_line,
)
from core.text import has_invisible, mark_invisible

HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@ ?(.*)$")
# A file with more changed lines than this is shown collapsed and without highlighting.
COLLAPSE_OVER = 400
# Highlighting is per line; past this many lines in one diff the rest is plain text.
HIGHLIGHT_LINE_BUDGET = 4000
FILES_SHOWN = 200  # files drawn on a page; "show more" asks for more, the download has all
# Binary data a page decodes at most (stored patches were read within limits.max_diff_mb).
BINARY_INFLATE_CAP = 128 * 1024 * 1024


@dataclass
class DiffLine:
    kind: str  # "context", "add", "del", "note" ("\ No newline at end of file")
    text: str
    old_no: int | None = None
    new_no: int | None = None


@dataclass
class Hunk:
    header: str
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    section: str
    lines: list[DiffLine] = field(default_factory=list)


@dataclass
class FileDiff:
    old_path: str
    new_path: str
    status: str = "modified"  # modified, added, deleted, renamed
    binary: bool = False
    header_lines: list[str] = field(default_factory=list)
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.old_path if self.status == "deleted" else self.new_path

    @property
    def added(self) -> int:
        return sum(1 for h in self.hunks for line in h.lines if line.kind == "add")

    @property
    def removed(self) -> int:
        return sum(1 for h in self.hunks for line in h.lines if line.kind == "del")

    @property
    def display_path(self) -> str:
        if self.status == "renamed":
            return f"{self.old_path} → {self.new_path}"
        return self.path


@dataclass(frozen=True)
class DiffStat:
    files: int
    added: int
    removed: int
    per_file: tuple[tuple[str, int, int, bool], ...] = ()

    def as_dict(self) -> dict:
        return {"files": self.files, "added": self.added, "removed": self.removed}


def diff_text(diff: str | bytes | None) -> str:
    """Diff text for parsing and display; bytes that are not UTF-8 become U+FFFD."""
    if diff is None:
        return ""
    if isinstance(diff, bytes | bytearray | memoryview):
        return bytes(diff).decode("utf-8", errors="replace")
    return diff


# The page shows any stored patch, one that does not read strictly included (it gets a
# notice): a name git would not have written is shown as it stands.
def _unquote(path: str) -> str:
    try:
        return path_unquote(path)
    except PatchError:
        return path


def _strip_prefix(path: str) -> str:
    try:
        return path_strip_prefix(path)
    except PatchError:
        return path


def _paths_from_git_line(line: str) -> tuple[str, str]:
    try:
        return paths_from_git_line(line)
    except PatchError:
        rest = line[len("diff --git ") :]
        return rest, rest


# What may follow `GIT binary patch` in a file's section: hunk headers, base85 lines, blanks.
_BINARY_DATA_RE = re.compile(
    r"^(?:(?:literal|delta) \d+|[A-Za-z][0-9A-Za-z!#$%&()*+;<=>?@^_`{|}~-]*)?$"
)


def diff_parse(diff: str | bytes | None) -> list[FileDiff]:
    """Split a `git diff` into files and hunks, with line numbers on both sides."""
    files: list[FileDiff] = []
    current: FileDiff | None = None
    hunk: Hunk | None = None
    old_no = new_no = 0
    in_binary_patch = False
    for line in diff_text(diff).split("\n"):
        if line.startswith("diff --git "):
            old, new = _paths_from_git_line(line)
            current = FileDiff(old_path=old, new_path=new, header_lines=[line])
            files.append(current)
            hunk = None
            in_binary_patch = False
            continue
        if current is None:
            continue
        if in_binary_patch and not _BINARY_DATA_RE.match(line):
            # `git apply` reads a `---`/`+++` pair after a binary patch as the next file's patch
            # (the strict reading at capture refuses it): show it as a file of its own.
            in_binary_patch = False
            if line.startswith("--- "):
                old = _strip_prefix(line[4:])
                current = FileDiff(old_path=old, new_path=old, header_lines=[line])
                files.append(current)
                hunk = None
                continue
        if hunk is not None and not in_binary_patch:
            if line.startswith("+") and not line.startswith("+++ "):
                hunk.lines.append(DiffLine("add", line[1:], None, new_no))
                new_no += 1
                continue
            if line.startswith("-") and not line.startswith("--- "):
                hunk.lines.append(DiffLine("del", line[1:], old_no, None))
                old_no += 1
                continue
            if line.startswith(" "):
                hunk.lines.append(DiffLine("context", line[1:], old_no, new_no))
                old_no += 1
                new_no += 1
                continue
            if line.startswith("\\"):
                hunk.lines.append(DiffLine("note", line[1:].strip()))
                continue
            # A "+++"/"---" inside a hunk is content when the hunk still expects lines.
            if line.startswith(("+++ ", "--- ")) and _hunk_open(hunk, old_no, new_no):
                kind = "add" if line[0] == "+" else "del"
                if kind == "add":
                    hunk.lines.append(DiffLine("add", line[1:], None, new_no))
                    new_no += 1
                else:
                    hunk.lines.append(DiffLine("del", line[1:], old_no, None))
                    old_no += 1
                continue
        match = HUNK_RE.match(line)
        if match and not in_binary_patch:
            a, b, c, d, section = match.groups()
            hunk = Hunk(
                header=line,
                old_start=int(a),
                old_len=int(b) if b is not None else 1,
                new_start=int(c),
                new_len=int(d) if d is not None else 1,
                section=section,
            )
            current.hunks.append(hunk)
            old_no, new_no = hunk.old_start, hunk.new_start
            continue
        if not line and hunk is not None:
            # Some tools strip the space of an empty context line.
            if not in_binary_patch and _hunk_open(hunk, old_no, new_no):
                hunk.lines.append(DiffLine("context", "", old_no, new_no))
                old_no += 1
                new_no += 1
            continue
        current.header_lines.append(line)
        if line.startswith("new file mode"):
            current.status = "added"
        elif line.startswith("deleted file mode"):
            current.status = "deleted"
        elif line.startswith("rename from "):
            current.status = "renamed"
            current.old_path = _unquote(line[len("rename from ") :])
        elif line.startswith("rename to "):
            current.status = "renamed"
            current.new_path = _unquote(line[len("rename to ") :])
        elif line.startswith("--- ") and line[4:].split("\t")[0] != "/dev/null":
            current.old_path = _strip_prefix(line[4:])
        elif line.startswith("+++ ") and line[4:].split("\t")[0] != "/dev/null":
            current.new_path = _strip_prefix(line[4:])
        elif line.startswith("Binary files ") or line == "GIT binary patch":
            current.binary = True
            in_binary_patch = line == "GIT binary patch"
    return files


def _hunk_open(hunk: Hunk, old_no: int, new_no: int) -> bool:
    return old_no < hunk.old_start + hunk.old_len or new_no < hunk.new_start + hunk.new_len


def diff_stat(diff: str | bytes | list[FileDiff] | None) -> DiffStat:
    files = diff if isinstance(diff, list) else diff_parse(diff)
    per_file = tuple((f.display_path, f.added, f.removed, f.binary) for f in files)
    return DiffStat(
        files=len(files),
        added=sum(p[1] for p in per_file),
        removed=sum(p[2] for p in per_file),
        per_file=per_file,
    )


def diff_hash(diff: str | bytes | None) -> str:
    """A stable fingerprint of the exact diff a decision was made on (sha256, hex)."""
    raw = diff.encode("utf-8", errors="surrogateescape") if isinstance(diff, str) else diff or b""
    return hashlib.sha256(bytes(raw)).hexdigest()


# Past this many changed lines a digest keeps only its key: near-identical groups are found
# among changes a reviewer can still compare by eye.
CHANGE_LINES_KEPT = 2000
_MODE_LINES = ("new file mode", "deleted file mode", "old mode", "new mode")


def diff_changes(diff: str | bytes | None) -> list[list]:
    """The change itself: per file `[path, status, ["+added", "-removed", ...]]`.

    Context lines, line numbers, hunk headers and blob ids are dropped, so the same edit made
    in repositories whose files differ around it gives the same value. Mode lines and binary
    patches stay (they are part of the change).
    """
    out = []
    for f in diff_parse(diff):
        lines = [
            ("+" if line.kind == "add" else "-") + line.text
            for hunk in f.hunks
            for line in hunk.lines
            if line.kind in ("add", "del")
        ]
        extra = [h for h in f.header_lines if h.startswith(_MODE_LINES)]
        if f.binary:
            body = "\n".join(h for h in f.header_lines if not h.startswith(("index ", "diff ")))
            extra.append("binary " + hashlib.sha256(body.encode("utf-8", "replace")).hexdigest())
        status = f.status if f.status != "renamed" else f"renamed from {f.old_path}"
        out.append([f.path, " ".join([status, *extra]), lines])
    return out


def diff_normalise(diff: str | bytes | None) -> str:
    """The canonical text of `diff_changes` (what the group key hashes). Bytes that are not
    UTF-8 are kept as they are (surrogate escapes), not all made U+FFFD: `'\xe9'` and `'\xff'`
    in a Latin-1 file are different changes."""
    if isinstance(diff, bytes | bytearray | memoryview):
        diff = bytes(diff).decode("utf-8", errors="surrogateescape")
    return json.dumps(diff_changes(diff), ensure_ascii=False, separators=(",", ":"))


def diff_group_key(diff: str | bytes | None) -> str:
    """Runs whose diffs share this key made the same change; empty diffs have key ''."""
    if not diff_text(diff).strip():
        return ""
    normal = diff_normalise(diff).encode("utf-8", errors="surrogateescape")
    return hashlib.sha256(normal).hexdigest()


# --- rendering -------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _lexer_for(path: str):
    try:
        return get_lexer_for_filename(path, stripnl=False, stripall=False, ensurenl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False, ensurenl=False)


@lru_cache(maxsize=1)
def _formatter():
    return HtmlFormatter(nowrap=True, classprefix="hl-")


def highlight_css() -> str:
    """The Pygments colour rules for `.diff-view` code (class prefix `hl-`)."""
    return _formatter().get_style_defs(".diff-view")


class _Highlighter:
    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, path: str, text: str, enabled: bool, show_ws: bool) -> SafeString:
        if enabled and self.budget > 0 and text:
            self.budget -= 1
            html = highlight(text, _lexer_for(path), _formatter()).rstrip("\n")
        else:
            html = escape(text)
        if show_ws:
            html = _mark_trailing_ws(html, text)
        html = mark_invisible(html)
        # Pygments and escape() both escape &, <, >, quotes: the markup is ours alone.
        return mark_safe(html)  # noqa: S308


def _mark_trailing_ws(html: str, text: str) -> str:
    stripped = text.rstrip(" \t")
    trailing = text[len(stripped) :]
    if not trailing or not html.endswith(trailing):
        return html
    visible = trailing.replace("\t", "→\t").replace(" ", "·")
    return html[: -len(trailing)] + f'<span class="ws">{visible}</span>'


@dataclass
class UnifiedRow:
    kind: str  # context, add, del, note, hunk
    old_no: int | None
    new_no: int | None
    html: SafeString
    differs: bool = False  # not in the near-identical group it is compared with


@dataclass
class SplitRow:
    left_kind: str
    left_no: int | None
    left_html: SafeString
    right_kind: str
    right_no: int | None
    right_html: SafeString


@dataclass
class FileView:
    path: str
    status: str
    binary: bool
    added: int
    removed: int
    collapsed: bool
    anchor: str
    rows: list = field(default_factory=list)
    invisible: bool = False  # invisible or bidi characters in its name or changed lines
    binary_text: bool = False  # a binary hunk whose content is text, shown decoded
    binary_unshown: bool = False  # a binary hunk whose content is text but cannot be shown

    @property
    def path_html(self) -> SafeString:
        return mark_safe(mark_invisible(escape(self.path)))  # noqa: S308


def _whitespace_only(a: str, b: str) -> bool:
    return a != b and "".join(a.split()) == "".join(b.split())


def _hide_whitespace(lines: list[DiffLine], hidden: list[int] | None = None) -> list[DiffLine]:
    """Show del/add pairs that differ only in whitespace as one context line (the new one);
    `hidden` (a one-item counter) counts the pairs hidden."""
    out: list[DiffLine] = []
    i = 0
    while i < len(lines):
        if lines[i].kind != "del":
            out.append(lines[i])
            i += 1
            continue
        dels = []
        while i < len(lines) and lines[i].kind == "del":
            dels.append(lines[i])
            i += 1
        adds = []
        while i < len(lines) and lines[i].kind == "add":
            adds.append(lines[i])
            i += 1
        if len(dels) == len(adds) and all(
            _whitespace_only(d.text, a.text) for d, a in zip(dels, adds, strict=True)
        ):
            out.extend(
                DiffLine("context", a.text, d.old_no, a.new_no)
                for d, a in zip(dels, adds, strict=True)
            )
            if hidden is not None:
                hidden[0] += len(dels)
        else:
            out.extend(dels)
            out.extend(adds)
    return out


class FileViews(list):
    """The files drawn, and `total`: how many the diff has (more when `limit` cut it); what a
    reviewer must notice before approving: `whitespace_hidden` changed pairs hidden,
    `unreadable` (why the patch cannot be read as `git apply` reads it, or ""), and the files
    `flagged` for invisible characters or text sent as binary."""

    def __init__(self, *, total: int) -> None:
        super().__init__()
        self.total = total
        self.whitespace_hidden = 0
        self.unreadable = ""

    @property
    def flagged(self) -> list:
        return [f for f in self if f.invisible or f.binary_text or f.binary_unshown]


def diff_view(
    diff: str | bytes | None,
    *,
    mode: str = "unified",
    whitespace: bool = True,
    collapse_over: int = COLLAPSE_OVER,
    expand: str = "",
    differing: set[tuple[str, str]] | None = None,
    limit: int | None = FILES_SHOWN,
    mask=None,
) -> list[FileView]:
    """Rows ready for `review/diff.html#diff-viewer`, every cell already escaped.

    `whitespace=False` hides changes that only touch whitespace; with it on, trailing
    whitespace is made visible. Files over `collapse_over` changed lines start collapsed
    unless their path is `expand`. Unified rows whose `(path, "+text")` or `(path, "-text")`
    is in `differing` are marked (what sets a near-identical group apart). Only the first
    `limit` files are drawn (a page of a change with 100,000 files would weigh many MB); the
    page offers the rest and the whole patch as a download.

    A binary file whose new content is text (a repository's `.gitattributes` can mark source
    files binary) is shown decoded, through `mask` (the campaign's secret masking) when given.
    """
    highlighter = _Highlighter(HIGHLIGHT_LINE_BUDGET)
    parsed = diff_parse(diff)
    views = FileViews(total=len(parsed))
    decoded = _binary_hunks(diff, parsed, views)
    hidden = [0]
    for index, f in enumerate(parsed):
        if limit is not None and index >= limit:
            break
        if f.binary and decoded.get(index) is not None:
            _binary_as_text(f, decoded[index], mask)
        changed = f.added + f.removed
        collapsed = changed > collapse_over and f.path != expand
        view = FileView(
            path=f.display_path,
            status=f.status,
            binary=f.binary,
            added=f.added,
            removed=f.removed,
            collapsed=collapsed,
            anchor=f"file-{index}",
            invisible=has_invisible(f.display_path)
            or any(
                line.kind in ("add", "del") and has_invisible(line.text)
                for hunk in f.hunks
                for line in hunk.lines
            ),
            binary_text=f.binary and bool(f.hunks),
            binary_unshown=f.binary and index in decoded and decoded[index] is None,
        )
        views.append(view)
        if collapsed or (f.binary and not f.hunks):
            continue
        highlight = changed <= collapse_over
        for hunk in f.hunks:
            lines = hunk.lines if whitespace else _hide_whitespace(hunk.lines, hidden)
            header = mark_safe(escape(hunk.header))  # noqa: S308
            if mode == "split":
                view.rows.append(SplitRow("hunk", None, header, "hunk", None, header))
                view.rows.extend(_split_rows(f.path, lines, highlighter, highlight, whitespace))
            else:
                view.rows.append(UnifiedRow("hunk", None, None, header))
                for line in lines:
                    html = highlighter(f.path, line.text, highlight, whitespace)
                    sign = {"add": "+", "del": "-"}.get(line.kind)
                    differs = bool(differing and sign and (f.path, sign + line.text) in differing)
                    view.rows.append(UnifiedRow(line.kind, line.old_no, line.new_no, html, differs))
    views.whitespace_hidden = hidden[0]
    return views


# Decoded binary content drawn on a page: past it the file is flagged but not drawn.
BINARY_TEXT_SHOWN = 2 * 1024 * 1024


def _binary_hunks(diff, parsed: list[FileDiff], views: FileViews) -> dict[int, str | None]:
    """{file index: decoded text of its binary literal, or None for a binary hunk that may be
    text but cannot be shown (a delta, or too large)} for binary files whose content is text;
    sets `views.unreadable` when the patch cannot be read strictly."""
    if isinstance(diff, bytes | bytearray | memoryview):
        raw = bytes(diff)
    else:
        raw = (diff or "").encode("utf-8", errors="surrogateescape")
    try:
        files = patch_read(raw, inflate_cap=BINARY_INFLATE_CAP)
    except PatchError as exc:
        views.unreadable = exc.message
        return {}
    if len(files) != len(parsed):
        views.unreadable = "the page and git read a different number of files"
        return {}
    out: dict[int, str | None] = {}
    for index, f in enumerate(files):
        hunk = f.forward
        if hunk is None:
            continue
        if hunk.kind == "delta":
            if hunk.inserted_text is not None:
                out[index] = None
            continue
        text = hunk.text
        if text is not None:
            out[index] = text if len(hunk.data) <= BINARY_TEXT_SHOWN else None
    return out


def _binary_as_text(f: FileDiff, text: str, mask) -> None:
    """Give a binary file whose new content is text that content as added lines."""
    if mask is not None:
        text = mask(text)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    hunk = Hunk(
        header="@@ new content, decoded from a binary patch @@",
        old_start=0,
        old_len=0,
        new_start=1,
        new_len=len(lines),
        section="",
    )
    hunk.lines = [DiffLine("add", line, None, n) for n, line in enumerate(lines, start=1)]
    f.hunks = [hunk]


def _split_rows(path, lines, highlighter, highlight, whitespace) -> list[SplitRow]:
    rows: list[SplitRow] = []
    empty = mark_safe("")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.kind in ("context", "note"):
            html = highlighter(path, line.text, highlight and line.kind == "context", whitespace)
            rows.append(SplitRow(line.kind, line.old_no, html, line.kind, line.new_no, html))
            i += 1
            continue
        dels, adds = [], []
        while i < len(lines) and lines[i].kind == "del":
            dels.append(lines[i])
            i += 1
        while i < len(lines) and lines[i].kind == "add":
            adds.append(lines[i])
            i += 1
        for n in range(max(len(dels), len(adds))):
            d = dels[n] if n < len(dels) else None
            a = adds[n] if n < len(adds) else None
            rows.append(
                SplitRow(
                    "del" if d else "empty",
                    d.old_no if d else None,
                    highlighter(path, d.text, highlight, whitespace) if d else empty,
                    "add" if a else "empty",
                    a.new_no if a else None,
                    highlighter(path, a.text, highlight, whitespace) if a else empty,
                )
            )
    return rows


@dataclass
class FileComparison:
    path: str
    outcome: str  # same, only_a, only_b, different
    rows: list[UnifiedRow] = field(default_factory=list)


def _file_patch(f: FileDiff) -> list[str]:
    out = []
    for hunk in f.hunks:
        out.append("@@")
        prefix = {"add": "+", "del": "-", "context": " ", "note": "\\"}
        out.extend(prefix[line.kind] + line.text for line in hunk.lines)
    return out


def diff_compare(
    a: str | bytes | None, b: str | bytes | None, *, limit: int | None = FILES_SHOWN
) -> list[FileComparison]:
    """What differs between two variants' diffs, file by file (a diff of the two patches):
    the first `limit` files (the list's `total` says how many there are)."""
    files_a = {f.path: f for f in diff_parse(a)}
    files_b = {f.path: f for f in diff_parse(b)}
    paths = sorted(files_a.keys() | files_b.keys())
    out = FileViews(total=len(paths))
    for path in paths[:limit] if limit is not None else paths:
        fa, fb = files_a.get(path), files_b.get(path)
        if fa is None:
            out.append(FileComparison(path, "only_b"))
            continue
        if fb is None:
            out.append(FileComparison(path, "only_a"))
            continue
        pa, pb = _file_patch(fa), _file_patch(fb)
        if pa == pb and fa.binary == fb.binary and fa.status == fb.status:
            out.append(FileComparison(path, "same"))
            continue
        rows = []
        for line in list(difflib.unified_diff(pa, pb, "a", "b", lineterm="", n=2))[2:]:
            kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "context")
            text = line if kind == "hunk" else line[1:]
            rows.append(UnifiedRow(kind, None, None, mark_safe(escape(text))))  # noqa: S308
        out.append(FileComparison(path, "different", rows))
    return out
