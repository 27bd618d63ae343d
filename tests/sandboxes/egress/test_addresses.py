"""Address classification: only public unicast passes, in every IPv6 disguise."""

import pytest

from sandboxes.egress.addresses import address_refusal, addresses_refusal

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.mark.parametrize(
    "address, reason",
    [
        ("93.184.216.34", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - a value, not a bind
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("198.18.0.1", "benchmarking"),
        ("fc00::1", "unique local (private)"),
        ("fd12:3456::1", "unique local (private)"),
        ("::ffff:127.0.0.1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
        ("::ffff:10.0.0.1", "private (IPv4 10.0.0.1 inside IPv6)"),
        (
            "::ffff:169.254.169.254",
            "link-local (cloud metadata) (IPv4 169.254.169.254 inside IPv6)",
        ),
        ("::ffff:93.184.216.34", None),
        ("::127.0.0.1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
        ("2002:7f00:1::", "loopback (IPv4 127.0.0.1 inside IPv6)"),
        ("2002:a00:1::", "private (IPv4 10.0.0.1 inside IPv6)"),
        ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata) (IPv4 169.254.169.254 inside IPv6)"),
        ("64:ff9b::5db8:d822", None),
        ("not-an-ip", "not an IP address"),
    ],
)
def test_address_refusal(address, reason):
    assert address_refusal(address) == reason


def test_any_bad_address_refuses_the_name():
    assert addresses_refusal(["93.184.216.34", "1.1.1.1"]) is None
    assert addresses_refusal(["93.184.216.34", "10.0.0.7"]) == ("10.0.0.7", "private")
    assert addresses_refusal([]) == ("", "no address")
