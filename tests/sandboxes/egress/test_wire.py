"""The egress proxy's ClientHello reader on plain bytes: real hellos however they are split,
and every malformed one refused with its reason."""

from __future__ import annotations

import pytest

from sandboxes.egress.wire import (
    HELLO_EXTENSIONS_MAX,
    HELLO_LIMIT,
    BadHello,
    ClientHello,
    ClientHelloReader,
    client_hello_refusal,
)
from tests.sandboxes.egress.hellos import (
    extension,
    handshake_of,
    hello_make,
    hello_real,
    records_make,
    server_names,
)

pytestmark = pytest.mark.shapes("embedded", "production")


def read(stream: bytes) -> ClientHello:
    """Feed `stream` as the proxy does, what `wanted()` asks for at a time."""
    reader = ClientHelloReader()
    while True:
        chunk = stream[len(reader.data) : len(reader.data) + reader.wanted()]
        if not chunk:
            raise AssertionError("the reader wants bytes the stream does not have")
        if (hello := reader.feed(chunk)) is not None:
            assert bytes(reader.data) == stream[: len(reader.data)]
            return hello


def test_a_real_client_hello_is_read_however_its_records_split_it():
    real = hello_real("api.test")
    message = handshake_of(real)
    for stream in (
        real,
        records_make(message, sizes=(2,)),  # the handshake header itself split
        records_make(message, sizes=(40, 100)),
        records_make(message, sizes=(1,) * len(message)),
    ):
        hello = read(stream)
        assert hello.server_names == ("api.test",)
        assert client_hello_refusal(hello, "api.test") is None
        assert "does not match CONNECT host other.test" in client_hello_refusal(hello, "other.test")


def test_bytes_after_the_hello_are_not_read():
    real = hello_real("api.test")
    reader = ClientHelloReader()
    assert reader.feed(real[:10]) is None
    assert reader.wanted() == len(real) - 10
    assert reader.feed(real[10:]) is not None


def test_a_hello_without_a_server_name_is_refused():
    hello = read(hello_real(None))
    assert hello.server_names is None
    assert client_hello_refusal(hello, "api.test") == (
        "the TLS ClientHello names no server (it must name api.test)"
    )


@pytest.mark.parametrize(
    "names, host, reason",
    [
        ((b"API.Test",), "api.test", None),
        ((b"api.test", b"evil.test"), "api.test", "names several servers: 'api.test', 'evil"),
        ((b"api.test", b"api.test"), "api.test", "names several servers"),
        ((b"evil.test",), "api.test", "TLS server name evil.test does not match"),
        ((b"api.test.",), "api.test", "TLS server name 'api.test.' is not a DNS name"),
        ((b"api.test\0.evil.test",), "api.test", "is not a DNS name"),
        ((b"api.test\xff",), "api.test", "is not a DNS name"),
        ((b"api test",), "api.test", "is not a DNS name"),
    ],
)
def test_exactly_one_server_name_equal_to_the_connect_host(names, host, reason):
    hello = read(records_make(hello_make(server_names(*names))))
    refusal = client_hello_refusal(hello, host)
    assert refusal == reason if reason is None else reason in refusal


@pytest.mark.parametrize(
    "kind, name", [(0xFE0D, "encrypted_client_hello"), (0xFFCE, "encrypted_server_name")]
)
def test_a_hello_that_hides_its_server_name_is_refused(kind, name):
    hello = read(records_make(hello_make(server_names(b"api.test"), extension(kind, b"\0" * 40))))
    assert client_hello_refusal(hello, "api.test") == (
        f"the TLS ClientHello hides its server name ({name})"
    )


def _with_body(body: bytes) -> bytes:
    return records_make(b"\x01" + len(body).to_bytes(3, "big") + body)


_HEAD = b"\x03\x03" + bytes(32)  # version, random
_GOOD_SNI = server_names(b"api.test")
_BODY = _HEAD + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"  # up to the extensions


@pytest.mark.parametrize(
    "stream, reason",
    [
        (b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", "not TLS: the client's first bytes"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not TLS"),
        (b"\x80\x2e\x01\x03\x01\x00\x15", "not TLS"),  # an SSLv2-framed hello
        (b"\x16\x02\x00\x00\x10", "not TLS: the client's first record has no TLS version"),
        (b"\x16\x03\x01\x00\x00", "a TLS handshake record of 0 bytes"),
        (b"\x16\x03\x01\x40\x01", "a TLS handshake record of 16385 bytes"),
        (
            records_make(hello_make(_GOOD_SNI), sizes=(30,))[:35] + b"\x15\x03\x03\x00\x02\x02\x28",
            "a TLS record of type 21 inside the ClientHello",
        ),
        (records_make(b"\x02\x00\x00\x04abcd"), "the first TLS handshake message is not a Cl"),
        (records_make(b"\x01\x01\x00\x00" + bytes(100)), f"larger than {HELLO_LIMIT} bytes"),
        (  # a hello under the limit in records whose headers take it over
            records_make(hello_make(_GOOD_SNI, padding=59000), sizes=(10,) * 6000),
            f"larger than {HELLO_LIMIT} bytes",
        ),
        (records_make(hello_make(_GOOD_SNI) + b"\x14"), "records hold more than the ClientHello"),
        (_with_body(b"\x02\x03" + _BODY[2:]), "the TLS ClientHello has no TLS version"),
        (_with_body(_HEAD + b"\x21" + bytes(33) + _BODY[35:]), "session id is longer than 32"),
        (_with_body(_HEAD + b"\x00\x00\x03\x13\x01\x00\x01\x00"), "cipher suites have an odd"),
        (_with_body(_HEAD + b"\x00\x00\x00\x01\x00"), "field is too short"),
        (_with_body(_HEAD + b"\x00\x00\x02\x13\x01\x00"), "field is too short"),
        (_with_body(_HEAD + b"\x00\x00\x80\x13\x01"), "field runs past its end"),
        (_with_body(_BODY + b"\x00\x40" + _GOOD_SNI), "field runs past its end"),
        (_with_body(_BODY + b"\x00\x04" + _GOOD_SNI), "bytes after the TLS ClientHello's ext"),
        (_with_body(_BODY + b"\x00\x08\x00\x00\x00\x20" + bytes(4)), "field runs past its end"),
        (
            _with_body(_BODY + len(_GOOD_SNI).to_bytes(2, "big") + _GOOD_SNI + b"\0"),
            "bytes after the TLS ClientHello's extensions",
        ),
        (records_make(hello_make(_GOOD_SNI, _GOOD_SNI)), "has extension 0 twice"),
        (
            records_make(hello_make(server_names(b"api.test", name_type=1))),
            "names a server by something else than host_name",
        ),
        (records_make(hello_make(extension(0, b"\x00\x00"))), "field is too short"),
        (records_make(hello_make(extension(0, b"\x00\x01\x00"))), "field runs past its end"),
        (
            records_make(hello_make(extension(0, _GOOD_SNI[4:] + b"\0"))),
            "bytes after the TLS ClientHello's server name list",
        ),
        (records_make(hello_make(server_names(b""))), "field is too short"),
    ],
)
def test_a_malformed_hello_is_refused_with_its_reason(stream, reason):
    reader = ClientHelloReader()
    with pytest.raises(BadHello) as refused:
        for at in range(0, len(stream), 7):  # however it arrives
            assert reader.feed(stream[at : at + 7]) is None
    assert reason in str(refused.value)


def test_a_hello_of_thousands_of_extensions_is_refused():
    """Each extension was looked for among those before it: a 60 KB hello of 15,000 empty
    extensions held the proxy's one event loop (every sandbox's) for over a second."""
    name = server_names(b"api.test")
    many = [extension(kind, b"") for kind in range(100, 100 + 15_000)]
    with pytest.raises(BadHello, match=f"more than {HELLO_EXTENSIONS_MAX} extensions"):
        read(records_make(hello_make(name, *many)))
    # As many as a client may send are read.
    hello = read(records_make(hello_make(name, *many[: HELLO_EXTENSIONS_MAX - 1])))
    assert hello.server_names == ("api.test",) and len(hello.extensions) == HELLO_EXTENSIONS_MAX
