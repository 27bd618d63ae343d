"""Reading token usage out of model responses (JSON bodies and SSE streams) and building the
call's transcript (compressed, secret values masked)."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable

from core.secret_forms import SecretScanner

TRANSCRIPT_CAP = 2 * 1024 * 1024  # bytes of response kept per call; the rest is counted only
MASK = "[masked]"
# Bytes of a large answer's end kept to find its usage (providers put it last).
TAIL_KEEP = 256 * 1024
# A `"usage": {` key in raw JSON. Inside a JSON string the quotes would be escaped (\"usage\"),
# so what the model wrote cannot pass for it.
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*(?=\{)')


def _usage_of(event: dict) -> dict | None:
    """The usage object of an OpenAI body/chunk, a responses-API event or an Anthropic event."""
    for holder in (event, event.get("message"), event.get("response")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            return holder["usage"]
    return None


def _tokens(usage: dict) -> tuple[int, int]:
    def num(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    tokens_in = num("prompt_tokens") or num("input_tokens")
    # Anthropic counts cached input apart from input_tokens.
    tokens_in += num("cache_creation_input_tokens") + num("cache_read_input_tokens")
    return tokens_in, num("completion_tokens") or num("output_tokens")


class UsageReader:
    """Fed the response bytes as they pass; knows the tokens once the response ended.

    Streams: every `data:` line that mentions usage is parsed (OpenAI's final chunk with
    `stream_options.include_usage`, Anthropic's message_start and message_delta); counts only
    grow, so the last and largest wins.
    """

    def __init__(self, *, stream: bool) -> None:
        self.stream = stream
        self.tokens_in = 0
        self.tokens_out = 0
        self.size = 0
        self.kept = bytearray()
        self.found = False  # a usage object was read (else the gateway estimates the tokens)
        self._line = bytearray()
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = TRANSCRIPT_CAP - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        if not self.stream:
            if self.size > TRANSCRIPT_CAP:
                self._tail += chunk
                del self._tail[:-TAIL_KEEP]
            return
        self._line += chunk
        if b"\n" not in chunk:
            return
        *lines, rest = bytes(self._line).split(b"\n")
        self._line = bytearray(rest)
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                self._take(line[5:])

    def finish(self) -> None:
        if self.stream:
            if self._line.startswith(b"data:") and b'"usage"' in self._line:
                self._take(bytes(self._line[5:]))
        elif self.size <= TRANSCRIPT_CAP:
            self._take(bytes(self.kept))
        else:
            # Too large to keep whole (logprobs, n choices): the usage objects in its first
            # and last bytes, read where they stand.
            for part in (self.kept, self._tail):
                self._scan(bytes(part))

    def _take(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        usage = _usage_of(event) if isinstance(event, dict) else None
        if usage:
            self._count(usage)

    def _scan(self, data: bytes) -> None:
        decoder = json.JSONDecoder()
        for match in _USAGE_KEY.finditer(data):
            text = data[match.end() : match.end() + 64 * 1024].decode("utf-8", errors="replace")
            try:
                usage, _end = decoder.raw_decode(text)
            except ValueError:
                continue
            if isinstance(usage, dict):
                self._count(usage)

    def _count(self, usage: dict) -> None:
        tokens_in, tokens_out = _tokens(usage)
        if tokens_in or tokens_out:
            self.found = True
        self.tokens_in = max(self.tokens_in, tokens_in)
        self.tokens_out = max(self.tokens_out, tokens_out)


def _decoded(data: bytes):
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def transcript_pack(
    *,
    request: bytes,
    response: bytes,
    response_size: int,
    masks: Iterable[str],
    usage_estimated: bool = False,
) -> bytes:
    """One call's transcript: JSON {request, response, response_bytes}, masked, zlib'd;
    `usage_estimated` when the answer showed no usage and the gateway estimated it."""
    record = {
        "request": _decoded(request),
        "response": _decoded(response),
        "response_bytes": response_size,
    }
    if usage_estimated:
        record["usage_estimated"] = True
    if response_size > len(response):
        record["response_truncated"] = True
    text = json.dumps(record, ensure_ascii=False)
    text = masks_apply(text, masks)
    return zlib.compress(text.encode(), 6)


def masks_apply(text: str, masks: Iterable[str]) -> str:
    """Each value masked as MASK, also JSON-escaped and in its encoded forms (base64, hex,
    URL-encoded, reversed: core.secret_forms)."""
    values = {m for m in masks if m and len(m) >= 4}
    # The same value inside JSON strings may appear escaped.
    values |= {json.dumps(value)[1:-1] for value in values}
    return SecretScanner(sorted(values)).mask(text)


def transcript_unpack(blob: bytes) -> dict:
    if not blob:
        return {}
    return json.loads(zlib.decompress(bytes(blob)))
