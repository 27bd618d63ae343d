"""Byte-level helpers of the egress proxy: request heads, host:port, TLS SNI, the host's proxy.

Kept apart from the server so each can be tested on plain bytes.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class BadRequest(ValueError):
    """The client sent something that is not a proxy request we can judge."""


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def request_head_parse(raw: bytes) -> RequestHead:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("request head is not text") from e
    lines = text.split("\r\n")
    # A bare CR or LF ends a line for some servers and not for others: forwarded, it would let
    # a header the proxy never judged (a second Host, a second request) reach the upstream.
    for line in lines:
        if "\r" in line or "\n" in line:
            raise BadRequest(f"bare CR or LF in the request head: {line[:80]!r}")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line: {line[:80]!r}")
        headers.append((name, value.strip()))
    return RequestHead(parts[0].upper(), parts[1], parts[2], headers)


# A body's framing: its length in bytes (0: none), CHUNKED, or UNTIL_CLOSE (a response only).
CHUNKED = -1
UNTIL_CLOSE = -2


def request_body_framing(head: RequestHead) -> int:
    """Where the request's body ends, as the proxy will forward it: its Content-Length, or
    CHUNKED. A length two readers could take differently is refused: with both headers, or
    several Content-Length, or a coding other than chunked, the upstream might end the body
    elsewhere than the proxy and read the rest as a second request the proxy never judged."""
    lengths = [v for k, v in head.headers if k.lower() == "content-length"]
    codings = [v for k, v in head.headers if k.lower() == "transfer-encoding"]
    if lengths and codings:
        raise BadRequest(
            "both Content-Length and Transfer-Encoding: the body's length is ambiguous"
        )
    if len(lengths) > 1:
        raise BadRequest("several Content-Length headers: the body's length is ambiguous")
    if codings:
        if len(codings) > 1 or codings[0].lower() != "chunked":
            raise BadRequest(
                f"Transfer-Encoding {', '.join(codings)[:80]!r}: only chunked is forwarded"
            )
        return CHUNKED
    if lengths:
        value = lengths[0]
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise BadRequest(f"bad Content-Length {value[:40]!r}")
        return int(value)
    return 0


@dataclass
class ResponseHead:
    status: int
    status_line: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


def response_head_parse(raw: bytes) -> ResponseHead:
    """An upstream's answer head; BadRequest unless it starts with `HTTP/1.x NNN`. Lines
    without a colon are dropped (the answer goes to the sandbox that asked, and nowhere
    else)."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadRequest(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name and name == name.strip():
            headers.append((name, value.strip()))
    return ResponseHead(int(parts[1]), lines[0], headers)


def response_body_framing(answer: ResponseHead, *, method: str) -> int:
    """Where the answer's body ends (RFC 9112 6.3): none for HEAD, 1xx, 204 and 304; chunked
    when that is the last coding; one agreed Content-Length; else when the upstream closes."""
    if method == "HEAD" or answer.status < 200 or answer.status in (204, 304):
        return 0
    codings = answer.values("transfer-encoding")
    if codings:
        last = codings[-1].split(",")[-1].strip().lower()
        return CHUNKED if last == "chunked" else UNTIL_CLOSE
    lengths = {v for text in answer.values("content-length") for v in text.split(",")}
    lengths = {v.strip() for v in lengths}
    if len(lengths) == 1:
        (value,) = lengths
        if value.isascii() and value.isdigit() and len(value) <= 18:
            return int(value)
    return UNTIL_CLOSE


# A host name as DNS has it: ASCII labels of letters, digits, `_` and `-`. Anything else (a NUL,
# which ends the name the resolver sees; spaces, `%`, Latin-1 bytes) would let the name the
# policy matched differ from the name looked up and connected to.
_NAME_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def _host_checked(host: str, text: str, *, bracketed: bool) -> str:
    """The host lower-cased, a trailing dot dropped; BadRequest unless it is a DNS name (or,
    in brackets, an IPv6 address)."""
    if bracketed:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise BadRequest(f"bad address {text!r}") from None
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_NAME_LABEL.match(label) for label in labels):
        raise BadRequest(f"bad host name in {text!r}")
    return name


def hostport_split(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); the host lower-cased, brackets removed, and
    only a DNS name or a bracketed IPv6 address."""
    host, port_text = text, ""
    bracketed = text.startswith("[")
    if bracketed:
        end = text.find("]")
        if end < 0:
            raise BadRequest(f"bad address {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest(f"bad address {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise BadRequest(f"bad address {text!r} (an IPv6 address goes in brackets)")
    if not port_text:
        if default_port is None:
            raise BadRequest(f"{text!r} has no port")
        return _host_checked(host, text, bracketed=bracketed), default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise BadRequest(f"bad port in {text!r}")
    if not host:
        raise BadRequest(f"{text!r} has no host")
    return _host_checked(host, text, bracketed=bracketed), int(port_text)


def tls_client_hello_sni(data: bytes) -> tuple[bool, str | None, int]:
    """(is_tls, server_name, bytes_needed) for the start of a client's stream.

    `bytes_needed` > len(data) means the first record is incomplete: read more and ask again.
    A ClientHello split over several records is judged by its first one (no name found).
    """
    if len(data) < 5:
        return (len(data) == 0 or data[0] == 0x16), None, 5
    if data[0] != 0x16 or data[1] != 0x03:
        return False, None, 0
    record_end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < record_end:
        return True, None, record_end
    body = data[5:record_end]
    try:
        return True, _sni_from_handshake(body), record_end
    except (IndexError, ValueError):
        return True, None, record_end


def _sni_from_handshake(body: bytes) -> str | None:
    if body[0] != 0x01:  # not a ClientHello
        return None
    pos = 4 + 2 + 32  # handshake header, client version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
    pos += 1 + body[pos]  # compression methods
    if pos + 2 > len(body):
        return None
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    while pos + 4 <= min(end, len(body)):
        ext_type = int.from_bytes(body[pos : pos + 2], "big")
        ext_len = int.from_bytes(body[pos + 2 : pos + 4], "big")
        ext = body[pos + 4 : pos + 4 + ext_len]
        if ext_type == 0 and len(ext) >= 5 and ext[2] == 0:
            name_len = int.from_bytes(ext[3:5], "big")
            return ext[5 : 5 + name_len].decode("ascii").lower().rstrip(".")
        pos += 4 + ext_len
    return None


@dataclass(frozen=True)
class UpstreamProxy:
    """The host's own outbound proxy (from HTTPS_PROXY / HTTP_PROXY), which we chain to."""

    host: str
    port: int
    authorization: str | None = None

    @classmethod
    def from_url(cls, url: str) -> UpstreamProxy:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", ""):
            raise ValueError(f"only http:// upstream proxies are supported, got {url!r}")
        auth = None
        if parts.username:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(token.encode()).decode()
        return cls(parts.hostname or "", parts.port or 3128, auth)


@dataclass(frozen=True)
class UpstreamConfig:
    """Which upstream proxy (if any) to use for a scheme and host; honours NO_PROXY."""

    https: UpstreamProxy | None = None
    http: UpstreamProxy | None = None
    no_proxy: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UpstreamConfig:
        env = os.environ if env is None else env

        def pick(*names: str) -> UpstreamProxy | None:
            value = next((env[n] for n in names if env.get(n)), None)
            return UpstreamProxy.from_url(value) if value else None

        return cls(
            https=pick("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
            http=pick("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"),
            no_proxy=env.get("no_proxy") or env.get("NO_PROXY") or "",
        )

    def for_target(self, host: str, *, tunnel: bool) -> UpstreamProxy | None:
        proxy = self.https if tunnel else self.http
        if proxy is None:
            return None
        if self.no_proxy and urllib.request.proxy_bypass_environment(
            host, proxies={"no": self.no_proxy}
        ):
            return None
        return proxy
