"""The ways a secret's value can be written down that masking and leak detection look for.

A value is looked for as itself, reversed, in hex (both cases), URL-encoded and in base64
(standard and URL-safe alphabets, at each of the three byte alignments, so the value is found
inside a longer encoded text too). Splitting a value in pieces or encrypting it defeats any
scanner: that is what grants (only granted campaigns receive a secret) are for.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

# Encoded forms shorter than this would match ordinary text by chance.
MIN_FORM_CHARS = 6


def _base64_cores(data: bytes, *, urlsafe: bool) -> list[str]:
    """The part of the base64 text that depends only on `data`, for each alignment of `data`
    within a longer encoded text (characters that mix in neighbouring bytes are left out)."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    cores = []
    for offset in range(3):
        text = encode(b"\0" * offset + data).decode().rstrip("=")
        start = -(-offset * 8 // 6)  # ceil(8 * offset / 6)
        end = (offset + len(data)) * 8 // 6
        cores.append(text[start:end])
    return cores


def secret_forms(value: str) -> dict[str, str]:
    """{written form: kind} for one value; kinds are "plain", "reversed", "hex", "url", "base64"."""
    if not value:
        return {}
    data = value.encode()
    forms = {value: "plain"}
    candidates = [
        (value[::-1], "reversed"),
        (data.hex(), "hex"),
        (data.hex().upper(), "hex"),
        (quote(value, safe=""), "url"),
        (quote_plus(value, safe=""), "url"),
    ]
    candidates += [(core, "base64") for core in _base64_cores(data, urlsafe=False)]
    candidates += [(core, "base64") for core in _base64_cores(data, urlsafe=True)]
    for form, kind in candidates:
        if len(form) >= MIN_FORM_CHARS and form not in forms:
            forms[form] = kind
    return forms


class SecretScanner:
    """Finds and masks every written form of some named secrets in text.

    Masking replaces a form with `[secret NAME]` (or `[secret NAME, base64]`); unnamed values
    become `[masked]`. Longer forms win over shorter ones that overlap them.
    """

    def __init__(self, secrets: Mapping[str, str] | Iterable[str]) -> None:
        named = secrets.items() if isinstance(secrets, Mapping) else ((None, v) for v in secrets)
        self._found: dict[str, tuple[str | None, str]] = {}
        for name, value in named:
            if not value:
                continue
            pieces = [value]
            if "\n" in value:  # each line of a multi-line value (a key file) on its own
                pieces += [p.strip("\r") for p in value.split("\n") if len(p.strip()) >= 4]
            for piece in pieces:
                for form, kind in secret_forms(piece).items():
                    self._found.setdefault(form, (name, kind))
        ordered = sorted(self._found, key=len, reverse=True)
        self.longest = len(ordered[0]) if ordered else 0
        self._regex = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def _label(self, form: str) -> str:
        name, kind = self._found[form]
        if name is None:
            return "[masked]"
        return f"[secret {name}]" if kind == "plain" else f"[secret {name}, {kind}]"

    def mask(self, text: str) -> str:
        if self._regex is None:
            return text
        return self._regex.sub(lambda m: self._label(m.group(0)), text)

    __call__ = mask

    def find(self, text: str) -> dict[str, set[str]]:
        """{secret name: {kinds}} for every secret written somewhere in `text`."""
        hits: dict[str, set[str]] = {}
        if self._regex is None:
            return hits
        for match in self._regex.finditer(text):
            name, kind = self._found[match.group(0)]
            hits.setdefault(name or "", set()).add(kind)
        return hits
