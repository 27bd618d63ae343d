"""TLS ClientHellos for the egress tests: real ones from Python's ssl (OpenSSL), made ones with
any field wrong, and TLS over a tunnel whose first flight is split over several records."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path

HANDSHAKE = 0x16


def hello_real(name: str | None) -> bytes:
    """The records OpenSSL sends to start a handshake naming `name` (None: no server name)."""
    ctx = ssl.create_default_context()
    if name is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def handshake_of(records: bytes) -> bytes:
    """The handshake bytes the records carry, their headers taken off."""
    out, at = b"", 0
    while at < len(records):
        length = int.from_bytes(records[at + 3 : at + 5], "big")
        out += records[at + 5 : at + 5 + length]
        at += 5 + length
    return out


def records_make(message: bytes, *, sizes: tuple[int, ...] = (), kind: int = HANDSHAKE) -> bytes:
    """`message` framed as TLS records: the first fragments of `sizes` bytes, the rest in
    records of at most 16 KB."""
    out, at = b"", 0
    for size in [*sizes, *[16384] * (len(message) // 16384 + 1)]:
        if at >= len(message):
            break
        piece = message[at : at + size]
        out += bytes([kind, 3, 1]) + len(piece).to_bytes(2, "big") + piece
        at += len(piece)
    return out


def extension(kind: int, value: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


def server_names(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + len(n).to_bytes(2, "big") + n for n in names)
    return extension(0, len(entries).to_bytes(2, "big") + entries)


def hello_make(*extensions: bytes, padding: int = 0, session_id: bytes = b"") -> bytes:
    """A ClientHello handshake message (type and length first) with these extensions."""
    extensions_body = b"".join(extensions)
    if padding:
        extensions_body += extension(21, bytes(padding))
    body = (
        b"\x03\x03"
        + bytes(range(32))  # random
        + bytes([len(session_id)])
        + session_id
        + b"\x00\x02\x13\x01"  # one cipher suite
        + b"\x01\x00"  # one compression method: none
        + len(extensions_body).to_bytes(2, "big")
        + extensions_body
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_get_split(
    sock: socket.socket, cert: Path, name: str, *, sizes: tuple[int, ...] = (40,)
) -> bytes:
    """GET /hello over TLS on an established tunnel, OpenSSL's ClientHello sent in records
    of `sizes` bytes (the rest in one more); the whole response."""
    ctx = ssl.create_default_context(cafile=str(cert))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)

    def pump_in() -> bool:
        data = sock.recv(65536)
        incoming.write(data) if data else incoming.write_eof()
        return bool(data)

    first = True
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            out = outgoing.read()
            if first:
                out, first = records_make(handshake_of(out), sizes=sizes), False
            sock.sendall(out)
            if not pump_in():
                raise ConnectionError("the tunnel closed during the handshake") from None
    tls.write(f"GET /hello HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    sock.sendall(outgoing.read())
    answer = b""
    while True:
        try:
            answer += tls.read(65536)
        except ssl.SSLWantReadError:
            if not pump_in():
                break
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            break
    return answer
