"""Byte-level helpers of the egress proxy: request heads, host:port, TLS ClientHellos, the
host's proxy.

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


# The ClientHello of a tunnel to a TLS port, read whole before any byte goes upstream: its
# records' headers included, at most this many bytes (real ones take under 2 KB, a few with
# post-quantum key shares about 4 KB; the padding extension can take one to 16 KB).
HELLO_LIMIT = 64 * 1024
# Real clients send fewer than 30 extensions; a hello of thousands is a sandbox making the
# proxy's one event loop, shared by every sandbox, work for it.
HELLO_EXTENSIONS_MAX = 128
_RECORD_MAX = 1 << 14  # a TLS plaintext record's fragment, at most (RFC 8446 5.1)
_SERVER_NAME = 0x0000
# Encrypted Client Hello, and its draft ESNI: the name the server acts on is hidden inside.
_HIDDEN_NAME_EXTENSIONS = {0xFE0D: "encrypted_client_hello", 0xFFCE: "encrypted_server_name"}


class BadHello(ValueError):
    """The client's first bytes on a TLS port are not a ClientHello the proxy can judge."""


@dataclass(frozen=True)
class ClientHello:
    # The server_name extension's host_name entries, as sent (ASCII); None: no extension.
    server_names: tuple[str, ...] | None
    extensions: tuple[int, ...]


class ClientHelloReader:
    """Reassembles the ClientHello that starts a client's TLS stream from its handshake
    records (a client may split it over several, each holding a part), then parses it.

    Feed it what `wanted()` asks for until `feed` returns the hello; every byte fed is kept
    in `data`, to be forwarded as it came. Anything that is not a well-formed ClientHello
    within HELLO_LIMIT bytes is a BadHello: what the proxy cannot read, it cannot judge.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self._record = 0  # where the next record starts in data
        self._handshake = bytearray()

    def wanted(self) -> int:
        """How many more bytes to read before anything more can be said (at least 1)."""
        if len(self.data) < self._record + 5:
            return self._record + 5 - len(self.data)
        length = int.from_bytes(self.data[self._record + 3 : self._record + 5], "big")
        return max(1, self._record + 5 + length - len(self.data))

    def feed(self, chunk: bytes) -> ClientHello | None:
        self.data += chunk
        while True:
            header = self.data[self._record : self._record + 5]
            self._header_check(header)
            if len(header) < 5:
                return None
            end = self._record + 5 + int.from_bytes(header[3:5], "big")
            if len(self.data) < end:
                return None
            self._handshake += self.data[self._record + 5 : end]
            self._record = end
            if len(self._handshake) < 4:
                continue
            if self._handshake[0] != 0x01:
                raise BadHello("the first TLS handshake message is not a ClientHello")
            size = 4 + int.from_bytes(self._handshake[1:4], "big")
            if size > HELLO_LIMIT:
                raise BadHello(f"the TLS ClientHello is larger than {HELLO_LIMIT} bytes")
            if len(self._handshake) < size:
                continue
            if len(self._handshake) > size:
                raise BadHello("the TLS ClientHello's records hold more than the ClientHello")
            return client_hello_parse(bytes(self._handshake[4:]))

    def _header_check(self, header: bytes) -> None:
        first = self._record == 0
        if header[:1] not in (b"", b"\x16"):
            if first:
                raise BadHello("not TLS: the client's first bytes are not a TLS handshake")
            raise BadHello(f"a TLS record of type {header[0]} inside the ClientHello")
        if len(header) >= 2 and header[1] != 0x03:
            raise BadHello("not TLS: the client's first record has no TLS version")
        if len(header) < 5:
            return
        length = int.from_bytes(header[3:5], "big")
        if not 0 < length <= _RECORD_MAX:
            raise BadHello(f"a TLS handshake record of {length} bytes")
        if self._record + 5 + length > HELLO_LIMIT:
            raise BadHello(f"the TLS ClientHello is larger than {HELLO_LIMIT} bytes")


class _Fields:
    """Reads a TLS message's length-prefixed fields; BadHello when one runs past its end."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise BadHello("a TLS ClientHello field runs past its end")
        self.at += n
        return self.data[self.at - n : self.at]

    def number(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def vector(self, width: int, *, least: int = 0) -> bytes:
        value = self.take(self.number(width))
        if len(value) < least:
            raise BadHello("a TLS ClientHello field is too short")
        return value

    def done(self) -> bool:
        return self.at == len(self.data)


def client_hello_parse(body: bytes) -> ClientHello:
    """A ClientHello message's body (RFC 8446 4.1.2; RFC 5246 7.4.1.2), every length checked
    against what holds it; BadHello when anything is off."""
    fields = _Fields(body)
    if fields.number(2) >> 8 != 3:
        raise BadHello("the TLS ClientHello has no TLS version")
    fields.take(32)  # random
    if len(fields.vector(1)) > 32:
        raise BadHello("the TLS ClientHello's session id is longer than 32 bytes")
    if len(fields.vector(2, least=2)) % 2:
        raise BadHello("the TLS ClientHello's cipher suites have an odd length")
    fields.vector(1, least=1)  # compression methods
    if fields.done():
        return ClientHello(None, ())  # no extensions at all (old clients)
    extensions = _Fields(fields.vector(2))
    if not fields.done():
        raise BadHello("bytes after the TLS ClientHello's extensions")
    types, seen, names = [], set(), None
    while not extensions.done():
        kind = extensions.number(2)
        value = extensions.vector(2)
        if kind in seen:
            raise BadHello(f"the TLS ClientHello has extension {kind} twice")
        if len(types) == HELLO_EXTENSIONS_MAX:
            raise BadHello(f"the TLS ClientHello has more than {HELLO_EXTENSIONS_MAX} extensions")
        seen.add(kind)
        types.append(kind)
        if kind == _SERVER_NAME:
            names = _server_names_parse(value)
    return ClientHello(names, tuple(types))


def _server_names_parse(value: bytes) -> tuple[str, ...]:
    """The server_name extension's entries (RFC 6066 3): each a host_name; any other type of
    entry is a BadHello (its format is not known, so what follows it cannot be read)."""
    outer = _Fields(value)
    entries = _Fields(outer.vector(2, least=1))
    if not outer.done():
        raise BadHello("bytes after the TLS ClientHello's server name list")
    names = []
    while not entries.done():
        if entries.number(1) != 0:
            raise BadHello("the TLS ClientHello names a server by something else than host_name")
        raw = entries.vector(2, least=1)
        names.append(raw.decode("latin-1"))
    return tuple(names)


def client_hello_refusal(hello: ClientHello, host: str) -> str | None:
    """Why `hello` may not go to `host` (the CONNECT host, lower-case, no trailing dot), or
    None: it names exactly one server, by a DNS name equal to `host` (letters' case aside),
    and hides no other name (Encrypted Client Hello)."""
    hidden = [_HIDDEN_NAME_EXTENSIONS[k] for k in hello.extensions if k in _HIDDEN_NAME_EXTENSIONS]
    if hidden:
        return f"the TLS ClientHello hides its server name ({hidden[0]})"
    if not hello.server_names:
        return f"the TLS ClientHello names no server (it must name {host})"
    if len(hello.server_names) > 1:
        shown = ", ".join(repr(n) for n in hello.server_names[:4])
        return f"the TLS ClientHello names several servers: {shown}"
    (name,) = hello.server_names
    if not (name.isascii() and all(_NAME_LABEL.match(label) for label in name.lower().split("."))):
        return f"TLS server name {name[:80]!r} is not a DNS name"
    if name.lower() != host:
        return f"TLS server name {name} does not match CONNECT host {host}"
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
