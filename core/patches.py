"""A strict reading of a `git diff --binary` patch, the way `git apply` reads it, done on the host.

A transform controls every byte its sandbox prints, including the patch, so what reviewers see,
what the secret scan reads and what the diff limit counts must come from the patch itself:
each file starts with `diff --git`, has only git's own extended headers, then text hunks whose
line counts match their `@@` header or one `GIT binary patch` block, whose base85 and zlib data
are decoded here (bounded by `inflate_cap`). Anything else is refused (`PatchError`): a line
`git apply` would skip or read differently must not pass unseen.
"""

from __future__ import annotations

import base64
import re
import zlib
from dataclasses import dataclass, field

_HEADERS = (
    b"old mode ",
    b"new mode ",
    b"deleted file mode ",
    b"new file mode ",
    b"copy from ",
    b"copy to ",
    b"rename from ",
    b"rename to ",
    b"similarity index ",
    b"dissimilarity index ",
    b"index ",
)
_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(?: .*)?$")
_BINARY_RE = re.compile(rb"^(literal|delta) (\d+)$")
_BINARY_DIFFER_RE = re.compile(rb"^Binary files .* differ$")


class PatchError(ValueError):
    """The patch is not one `git diff --binary` would print: the message says where (a line
    number and what was expected there), never quoting the patch, which may hold a secret
    (messages are stored as a variant's error and shown)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PatchTooLarge(PatchError):
    """The patch's binary data inflates past the cap it was read with."""


@dataclass
class BinaryHunk:
    kind: str  # literal (data is the file's new content) or delta (data is git's delta)
    data: bytes
    result_size: int  # bytes the file has once applied

    @property
    def text(self) -> str | None:
        """A literal's content when it is text (UTF-8, no NUL), else None."""
        if self.kind != "literal" or b"\0" in self.data:
            return None
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @property
    def inserted_text(self) -> str | None:
        """A delta's inserted bytes when they are text (UTF-8, no NUL), else None."""
        if self.kind != "delta":
            return None
        inserted = delta_inserted(self.data)
        if not inserted or b"\0" in inserted:
            return None
        try:
            return inserted.decode("utf-8")
        except UnicodeDecodeError:
            return None


@dataclass
class PatchFile:
    old_path: str
    new_path: str
    status: str = "modified"  # modified, added, deleted, renamed, copied
    added: int = 0
    removed: int = 0
    binary: bool = False
    binary_hunks: list[BinaryHunk] = field(default_factory=list)  # forward, then reverse

    @property
    def path(self) -> str:
        return self.old_path if self.status == "deleted" else self.new_path

    @property
    def forward(self) -> BinaryHunk | None:
        return self.binary_hunks[0] if self.binary_hunks else None


_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def path_unquote(path: str) -> str:
    """Undo git's C-style quoting of unusual paths (`"a/caf\\303\\251"`, `"a/quo\\"te"`):
    the escapes git writes (`\\a \\b \\t \\n \\v \\f \\r \\" \\\\` and three octal digits for
    a byte), and raw text where `core.quotepath` is off. PatchError for any other escape."""
    if not (len(path) >= 2 and path[0] == '"' and path[-1] == '"'):
        return path
    out = bytearray()
    body, i = path[1:-1], 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode("utf-8", errors="surrogateescape")
            i += 1
            continue
        code = body[i + 1 : i + 2]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif len(body) >= i + 4 and all(c in "01234567" for c in body[i + 1 : i + 4]):
            value = int(body[i + 1 : i + 4], 8)
            if value > 255:
                raise PatchError("a bad escape in a quoted file name")
            out.append(value)
            i += 4
        else:
            raise PatchError("a bad escape in a quoted file name")
    return out.decode("utf-8", errors="replace")


def path_strip_prefix(path: str) -> str:
    quoted = _QUOTED.match(path) if path.startswith('"') else None
    path = path_unquote(quoted.group() if quoted else path.split("\t", 1)[0])
    if path.startswith(("a/", "b/")):
        return path[2:]
    return path


def paths_from_git_line(line: str) -> tuple[str, str]:
    """The two paths of a `diff --git a/x b/y` line (either may be quoted)."""
    rest = line[len("diff --git ") :]
    if rest.startswith('"'):
        first = _QUOTED.match(rest)
        if first is None:
            raise PatchError("an unterminated quoted file name after `diff --git`")
        return path_strip_prefix(first.group()), path_strip_prefix(rest[first.end() :].strip())
    if rest.endswith('"'):
        tail = re.search(r' ("(?:[^"\\]|\\.)*")$', rest)
        if tail is not None:
            return path_strip_prefix(rest[: tail.start()]), path_strip_prefix(tail.group(1))
    # "a/x b/x": the two halves are equal for everything but renames, which name both paths
    # again in "rename from/to" lines.
    half = len(rest) // 2
    if rest[:half] == "a/" + rest[half + 3 :] and rest[half : half + 3] == " b/":
        return rest[2:half], rest[half + 3 :]
    left, _, right = rest.partition(" b/")
    return path_strip_prefix(left), path_unquote(right)


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _base85_line(line: bytes, at: int) -> bytes:
    """One line of git's base85 (`apply.c` parse_binary_hunk): a length character (A-Z is
    1-26, a-z 27-52), then 5 characters per 4 bytes."""
    if not line:
        raise PatchError(f"line {at}: empty line inside binary data")
    first = line[0]
    if ord("A") <= first <= ord("Z"):
        count = first - ord("A") + 1
    elif ord("a") <= first <= ord("z"):
        count = first - ord("a") + 27
    else:
        raise PatchError(f"line {at}: not a line of binary data")
    body = line[1:]
    if len(body) < 5 or len(body) % 5 or not (len(body) // 5 * 4 - 4 < count <= len(body) // 5 * 4):
        raise PatchError(f"line {at}: binary data of the wrong length")
    try:
        return base64.b85decode(body)[:count]
    except ValueError:
        raise PatchError(f"line {at}: binary data that is not base85") from None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
    raise PatchError("a binary delta whose header is cut short")


def delta_inserted(delta: bytes) -> bytes:
    """The bytes a git delta inserts (its copy instructions take the rest from the old file);
    b"" for a delta that cannot be read."""
    try:
        _source, at = _varint(delta, 0)
        _result, at = _varint(delta, at)
    except PatchError:
        return b""
    out = []
    while at < len(delta):
        op = delta[at]
        at += 1
        if op & 0x80:  # copy: offset and size bytes named by the low 7 bits
            at += bin(op & 0x7F).count("1")
        elif op:
            out.append(delta[at : at + op])
            at += op
        else:
            return b""
    return b"".join(out)


def _inflate(data: bytes, cap: int, at: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, cap + 1)
    except zlib.error:
        raise PatchError(f"line {at}: binary data that does not inflate") from None
    if len(out) > cap:
        raise PatchTooLarge(f"line {at}: binary data inflating past {cap} bytes")
    if not inflater.eof or inflater.unused_data:
        raise PatchError(f"line {at}: binary data that does not end where it should")
    return out


class _Lines:
    def __init__(self, patch: bytes) -> None:
        if patch and not patch.endswith(b"\n"):
            raise PatchError("the patch ends in the middle of a line")
        self.lines = patch.split(b"\n")[:-1] if patch else []
        self.at = 0

    def peek(self) -> bytes | None:
        return self.lines[self.at] if self.at < len(self.lines) else None

    def take(self) -> bytes:
        line = self.lines[self.at]
        self.at += 1
        return line


def patch_read(patch: bytes, *, inflate_cap: int) -> list[PatchFile]:
    """The files of a `git diff --binary -p` patch, read strictly; PatchError when any line
    is not where git would print it. Binary data is decoded, at most `inflate_cap` bytes in
    all (past it: PatchError). Whatever else goes wrong reading it is a PatchError too: the
    patch is the sandbox's, and its caller fails one variant, never the run or a page."""
    try:
        return _patch_read(patch, inflate_cap=inflate_cap)
    except PatchError:
        raise
    except (ValueError, IndexError, KeyError, zlib.error) as exc:
        # Not the exception's text: it can quote the patch (`int()` does), and the message is
        # shown to people the patch's secrets are masked from.
        raise PatchError(f"the patch could not be read ({type(exc).__name__})") from None


def _patch_read(patch: bytes, *, inflate_cap: int) -> list[PatchFile]:
    lines = _Lines(bytes(patch))
    files: list[PatchFile] = []
    budget = [inflate_cap]
    while lines.peek() is not None:
        line = lines.take()
        if not line.startswith(b"diff --git "):
            raise PatchError(f"line {lines.at}: expected `diff --git`")
        old, new = paths_from_git_line(_text(line))
        current = PatchFile(old_path=old, new_path=new)
        files.append(current)
        _read_headers(lines, current)
        nxt = lines.peek()
        if nxt is None or nxt.startswith(b"diff --git "):
            continue
        if nxt == b"GIT binary patch":
            lines.take()
            current.binary = True
            _read_binary(lines, current, budget)
        elif _BINARY_DIFFER_RE.match(nxt):
            lines.take()
            current.binary = True
        elif nxt.startswith(b"--- "):
            _read_text(lines, current)
        else:
            raise PatchError(f"line {lines.at + 1}: expected `---`, a binary patch or `diff --git`")
        nxt = lines.peek()
        if nxt is not None and not nxt.startswith(b"diff --git "):
            raise PatchError(f"line {lines.at + 1}: expected the next file's `diff --git`")
    return files


def _read_headers(lines: _Lines, current: PatchFile) -> None:
    while (line := lines.peek()) is not None and line.startswith(_HEADERS):
        lines.take()
        text = _text(line)
        if text.startswith("new file mode "):
            current.status = "added"
        elif text.startswith("deleted file mode "):
            current.status = "deleted"
        elif text.startswith(("rename from ", "copy from ")):
            current.old_path = path_unquote(text.split(" ", 2)[2])
            current.status = "renamed" if text.startswith("rename") else "copied"
        elif text.startswith(("rename to ", "copy to ")):
            current.new_path = path_unquote(text.split(" ", 2)[2])
            current.status = "renamed" if text.startswith("rename") else "copied"


def _read_text(lines: _Lines, current: PatchFile) -> None:
    minus, plus = lines.take(), lines.peek()
    if plus is None or not plus.startswith(b"+++ "):
        raise PatchError(f"line {lines.at}: `---` without `+++`")
    lines.take()
    for name, line in (("old", minus[4:]), ("new", plus[4:])):
        path = path_strip_prefix(_text(line))
        expected = current.old_path if name == "old" else current.new_path
        if _text(line) != "/dev/null" and path != expected:
            raise PatchError(f"line {lines.at}: the {name} file name differs from `diff --git`")
    if lines.peek() is None or not lines.peek().startswith(b"@@ "):
        raise PatchError(f"line {lines.at + 1}: expected a hunk")
    while (line := lines.peek()) is not None and line.startswith(b"@@ "):
        lines.take()
        match = _HUNK_RE.match(line)
        if not match:
            raise PatchError(f"line {lines.at}: a hunk header that cannot be read")
        old_left = int(match[2]) if match[2] is not None else 1
        new_left = int(match[4]) if match[4] is not None else 1
        while old_left > 0 or new_left > 0:
            body = lines.peek()
            if body is None:
                raise PatchError(f"line {lines.at}: the patch ends inside a hunk")
            lines.take()
            kind = body[:1]
            if kind in (b" ", b""):  # an empty line is an empty context line to git too
                old_left, new_left = old_left - 1, new_left - 1
            elif kind == b"-":
                old_left -= 1
                current.removed += 1
            elif kind == b"+":
                new_left -= 1
                current.added += 1
            elif kind == b"\\":
                continue
            else:
                raise PatchError(f"line {lines.at}: a hunk line that is not ' ', '+' or '-'")
            if old_left < 0 or new_left < 0:
                raise PatchError(f"line {lines.at}: more lines than the hunk header says")
        if (line := lines.peek()) is not None and line.startswith(b"\\"):
            lines.take()


def _read_binary(lines: _Lines, current: PatchFile, budget: list[int]) -> None:
    for which in ("forward", "reverse"):
        header = lines.peek()
        if header is None or (which == "reverse" and not _BINARY_RE.match(header)):
            if which == "forward":
                raise PatchError(f"line {lines.at}: a binary patch without data")
            return
        lines.take()
        match = _BINARY_RE.match(header)
        if not match:
            raise PatchError(f"line {lines.at}: a binary hunk header that cannot be read")
        start = lines.at
        data = []
        while (line := lines.peek()) is not None and line:
            lines.take()
            data.append(_base85_line(line, lines.at))
        if line is None:
            raise PatchError(f"line {lines.at}: a binary hunk without its closing empty line")
        lines.take()
        kind, size = match[1].decode(), int(match[2])
        if which == "reverse":  # the old content, for `git apply -R`: never applied here
            current.binary_hunks.append(BinaryHunk(kind=kind, data=b"", result_size=0))
            return
        if kind == "literal" and size > budget[0]:
            raise PatchTooLarge(f"line {start - 1}: a binary file of {size} bytes")
        inflated = _inflate(b"".join(data), budget[0], start)
        budget[0] -= len(inflated)
        if len(inflated) != size:
            raise PatchError(f"line {start}: binary data of {len(inflated)} bytes, not {size}")
        result = size
        if kind == "delta":
            _source, at = _varint(inflated, 0)
            result, _ = _varint(inflated, at)
        current.binary_hunks.append(BinaryHunk(kind=kind, data=inflated, result_size=result))


def patch_binary_texts(patch: bytes, *, inflate_cap: int) -> list[str]:
    """The decoded content of every binary hunk (a literal's new content, a delta's
    instructions, which hold its inserted bytes), as text for a secret scan; [] when the
    patch cannot be read."""
    try:
        files = patch_read(patch, inflate_cap=inflate_cap)
    except PatchError:
        return []
    return [h.data.decode("utf-8", errors="replace") for f in files for h in f.binary_hunks]
