"""Log lines: bytes split into lines (secrets masked, long lines cut), rendered as HTML."""

from __future__ import annotations

import codecs
import html
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ansi2html import Ansi2HTMLConverter

from core.secret_forms import SecretScanner
from core.text import nul_shown
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


# Operating-system commands (ESC ] … BEL or ESC \\): ansi2html turns OSC 8 into a link, so a
# command could print a clickable "sign in again" pointing anywhere, inside Convoy's page.
# Only colours become markup; these go.
# One pass can leave an ESC whose complete sequence after it went, which then starts a new
# sequence with what follows: every ESC that does not start a CSI (colours) goes too.
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|\Z)")
_NOT_CSI = re.compile(r"\x1b(?!\[)")


def _ansi_to_html(text: str) -> str:
    converter = getattr(_ansi, "converter", None)
    if converter is None:
        converter = _ansi.converter = Ansi2HTMLConverter(inline=True, dark_bg=True)
    return converter.convert(
        _NOT_CSI.sub("", _OSC.sub("", text)), full=False, ensure_trailing_newline=False
    )


def log_line_html(line: Line | LogLine) -> str:
    """One line as an HTML element; ANSI colours become escaped markup, everything else escaped.

    Written as a format string rather than a template tag loop: it runs for every line at tens
    of thousands of lines a second. The panel's partials wrap these strings.
    """
    return _line_html(line.seq, line.stream, line.text, line.command_id)


def _line_html(seq: int, stream: str, text: str, command_id: int | None) -> str:
    body = _ansi_to_html(text) if "\x1b" in text else html.escape(text, quote=False)
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
    return [
        f'<div class="log-line log-{stream}" data-seq="{first + i}" data-cmd="{cmd}">{body}</div>'
        for i, ((stream, _, _), body) in enumerate(
            zip(batch, html.escape(joined, quote=False).split("\n"), strict=True)
        )
    ]
