"""Log lines: bytes split into lines (secrets masked, long lines cut), rendered as HTML."""

from __future__ import annotations

import codecs
import functools
import html
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ansi2html import Ansi2HTMLConverter

from core.secret_forms import SecretScanner
from core.text import has_invisible, mark_invisible, nul_shown
from sandboxes.models import LogLine

logger = logging.getLogger(__name__)


LINE_MAX_CHARS = 4096  # longer lines are split into several
PARTIAL_FLUSH_S = 0.5  # a line without its newline yet is shown after this long
PROGRESS_FLUSH_S = 2.0  # ... or this long while it is a `\r` progress bar still changing
MASK = "[masked]"
STREAMS = ("stdout", "stderr", "system")


# --- Turning bytes into lines -----------------------------------------------------------------


class SecretMasker(SecretScanner):
    """Replaces secret values (each line of a multi-line one, and their encoded forms: base64,
    hex, URL-encoded, reversed) with `[secret NAME]`; unnamed ones become MASK."""


def _collapse(line: str) -> str:
    """Keep only the last state of a line that redrew itself with carriage returns."""
    if "\r" not in line:
        return line
    line = line.rstrip("\r")
    return line[line.rfind("\r") + 1 :]


def _split_long(line: str) -> list[str]:
    if len(line) <= LINE_MAX_CHARS:
        return [line]
    return [line[i : i + LINE_MAX_CHARS] for i in range(0, len(line), LINE_MAX_CHARS)]


class _StreamSplitter:
    """One stream's bytes → complete lines; holds the unfinished last line."""

    def __init__(self, mask: SecretMasker) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._mask = mask
        self.pending = ""
        self.pending_since = 0.0

    def feed(self, data: bytes, now: float) -> list[str]:
        text = self._decoder.decode(data)
        if not text:
            return []
        text = nul_shown(text)  # PostgreSQL text cannot hold NUL
        if not self.pending:
            self.pending_since = now
        buffer = self.pending + text
        end = buffer.rfind("\n")
        lines: list[str] = []
        if end >= 0:
            # Masking the complete lines in one pass: no secret pattern contains a newline,
            # so none can straddle the cut.
            head = self._mask(buffer[:end])
            lines = head.split("\n")
            # The per-line work only when some line needs it (most output needs none).
            if "\r" in head or (end > LINE_MAX_CHARS and max(map(len, lines)) > LINE_MAX_CHARS):
                lines = [piece for line in lines for piece in _split_long(_collapse(line))]
            buffer = buffer[end + 1 :]
            self.pending_since = now
        if "\r" in buffer[:-1]:
            buffer = buffer[buffer.rfind("\r", 0, len(buffer) - 1) + 1 :]
        # A line that never ends is cut into LINE_MAX_CHARS pieces, keeping enough of its tail
        # unsent that a secret arriving in the next chunk is still seen whole.
        keep = max(self._mask.longest, 1)
        if len(buffer) >= LINE_MAX_CHARS + keep:
            buffer = self._mask(buffer)
            cut = ((len(buffer) - keep) // LINE_MAX_CHARS) * LINE_MAX_CHARS
            lines.extend(_split_long(buffer[:cut]))
            buffer = buffer[cut:]
        self.pending = buffer
        return lines

    def due(self, now: float) -> bool:
        if not self.pending:
            return False
        wait = PROGRESS_FLUSH_S if "\r" in self.pending else PARTIAL_FLUSH_S
        return now - self.pending_since >= wait

    def take_pending(self, *, final: bool = False) -> list[str]:
        if final:
            self.pending += self._decoder.decode(b"", final=True)
        text, self.pending = self.pending, ""
        if not text:
            return []
        return _split_long(_collapse(self._mask(text)))


# --- Rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    seq: int
    stream: str
    text: str
    command_id: int | None = None


_ansi = threading.local()


# What of the terminal's escape sequences a line keeps: colours and weight, as markup, and
# nothing else. One pass, left to right, every ESC consumed:
# - an operating-system command (ESC ] … BEL or ESC \\, or cut short by the next ESC or the
#   line's end) goes whole: ansi2html turns OSC 8 into a link, so a command could print a
#   clickable "sign in again" pointing anywhere, inside Convoy's page;
# - a control sequence (ESC [ params final) stays only as an SGR (final `m`) rebuilt from the
#   parameters in _SGR_KEPT (conceal, 8, became visibility:hidden; blink, inverse… go too;
#   so do background colours: `30;40`, or a background one step from its foreground, hid text
#   as conceal did, and a foreground is kept only if it stands out from the panel's background:
#   see _fg_shown);
#   one another ESC or the line's end cuts short goes with its parameters (removing an OSC in
#   an earlier pass left `ESC [3` before the text, which then became its final byte and went);
# - any other ESC goes.
_ESCAPE = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b\[([0-?]*)([ -/]*)([@-~]?)|\x1b")
_SGR_PARAMS = re.compile(r"[0-9;]*")
# reset; bold, dim, italic, underline and their ends; the 8 and 16 foreground colours and the
# default one
_SGR_KEPT = frozenset({0, 1, 2, 3, 4, 22, 23, 24, 39}).union(range(30, 38), range(90, 98))
# The log panel's background (static/css/logs.css `.log-view`) and the least contrast (WCAG's
# ratio) a foreground colour keeps against it: the 16 colours but black pass (blue, the
# darkest, is 1.4), a colour a step from the background does not (black is 1.1).
PANEL_BACKGROUND = (0x0F, 0x14, 0x20)
FG_CONTRAST_MIN = 1.3


def _sgr_kept(params: str) -> str:
    """The parameters of an SGR that _SGR_KEPT allows, with 38/48's 256-colour and RGB forms."""
    parts = [int(p) if p and len(p) <= 3 else (0 if not p else -1) for p in params.split(";")]
    kept: list[int] = []
    i = 0
    while i < len(parts):
        n = parts[i]
        if n in (38, 48):
            width = {5: 1, 2: 3}.get(parts[i + 1] if i + 1 < len(parts) else -1, 0)
            values = parts[i + 2 : i + 2 + width]
            if not width or len(values) < width or not all(0 <= v < 256 for v in values):
                break  # a colour it cannot read: the rest would be read out of step
            if n == 38:  # a background (48) is read past, not kept
                kept += parts[i : i + 2 + width]
            i += 2 + width
            continue
        if n in _SGR_KEPT:
            kept.append(n)
        i += 1
    return ";".join(map(str, kept))


def _escape_kept(m: re.Match) -> str:
    if m[0].startswith("\x1b[") and m[3] == "m" and not m[2] and _SGR_PARAMS.fullmatch(m[1]):
        kept = _sgr_kept(m[1])
        return f"\x1b[{kept}m" if kept else ""
    return ""


def _luminance(rgb: tuple[int, ...]) -> float:
    linear = [c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


_PANEL_LUMINANCE = _luminance(PANEL_BACKGROUND)
# A colour ansi2html wrote into a style attribute of its own (a sandbox's text cannot make a
# tag: its `<` is escaped).
_STYLE_COLOUR = re.compile(r'(<span style="(?:[^"<>]*?; )?)color: #([0-9a-fA-F]{6})')


@functools.cache
def _fg_shown(hex_colour: str) -> bool:
    """Whether a foreground colour stands out enough from the panel's background to be read."""
    lum = _luminance(tuple(bytes.fromhex(hex_colour)))
    light, dark = max(lum, _PANEL_LUMINANCE), min(lum, _PANEL_LUMINANCE)
    return (light + 0.05) / (dark + 0.05) >= FG_CONTRAST_MIN


def _fg_checked(m: re.Match) -> str:
    return m[0] if _fg_shown(m[2]) else m[1]


def _ansi_to_html(text: str) -> str:
    converter = getattr(_ansi, "converter", None)
    if converter is None:
        converter = _ansi.converter = Ansi2HTMLConverter(inline=True, dark_bg=True)
    body = converter.convert(
        _ESCAPE.sub(_escape_kept, text), full=False, ensure_trailing_newline=False
    )
    return _STYLE_COLOUR.sub(_fg_checked, body)


def log_line_html(line: Line | LogLine) -> str:
    """One line as an HTML element; ANSI colours become escaped markup, everything else escaped,
    invisible and bidi characters marked as the diff view marks them.

    Written as a format string rather than a template tag loop: it runs for every line at tens
    of thousands of lines a second. The panel's partials wrap these strings.
    """
    return _line_html(line.seq, line.stream, line.text, line.command_id)


def _line_html(seq: int, stream: str, text: str, command_id: int | None) -> str:
    body = _ansi_to_html(text) if "\x1b" in text else html.escape(text, quote=False)
    if has_invisible(text):
        body = mark_invisible(body)
    if stream not in STREAMS:
        stream = "stdout"
    return (
        f'<div class="log-line log-{stream}" data-seq="{seq}" '
        f'data-cmd="{command_id or ""}">{body}</div>'
    )


def _batch_html(first: int, batch: Sequence[tuple[str, str, datetime]], command_id) -> list[str]:
    """log_line_html for a batch: one escape call for the lot when no line has colours."""
    texts = [text for _, text, _ in batch]
    joined = "\n".join(texts)
    if "\x1b" in joined or joined.count("\n") != len(texts) - 1:
        return [
            _line_html(first + i, stream, text, command_id)
            for i, (stream, text, _) in enumerate(batch)
        ]
    cmd = command_id or ""
    escaped = html.escape(joined, quote=False)
    if has_invisible(joined):
        escaped = mark_invisible(escaped)  # its markers hold no newline
    return [
        f'<div class="log-line log-{stream}" data-seq="{first + i}" data-cmd="{cmd}">{body}</div>'
        for i, ((stream, _, _), body) in enumerate(zip(batch, escaped.split("\n"), strict=True))
    ]
