"""Which resolved addresses a sandbox may reach: public unicast only, whatever the name said.

The proxy resolves a name once, refuses it if ANY address is not public, and connects only to
the addresses it vetted (no second lookup, so a rebinding DNS server cannot swap them).
IPv6 forms that embed an IPv4 address (mapped, compatible, 6to4, NAT64, Teredo) are judged
by the address they embed.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address

_CGNAT = IPv4Network("100.64.0.0/10")
_ULA = IPv6Network("fc00::/7")
_NAT64 = (IPv6Network("64:ff9b::/96"), IPv6Network("64:ff9b:1::/48"))
_6TO4 = IPv6Network("2002::/16")
_IPV4_COMPAT = IPv6Network("::/96")
# Benchmarking and documentation ranges are `is_private` in Python, but spell them out anyway
# in case a Python version changes its tables.
_EXTRA_V4 = (
    (IPv4Network("198.18.0.0/15"), "benchmarking"),
    (IPv4Network("192.0.0.0/24"), "protocol assignments"),
    (IPv4Network("0.0.0.0/8"), "this network"),
    (IPv4Network("240.0.0.0/4"), "reserved"),
)


def address_refusal(address: str | IPAddress) -> str | None:
    """Why `address` may not be reached ("loopback", "private", …), or None when it is public."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return "not an IP address"
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            return "link-local"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = _refusal_v4(embedded)
            return f"{reason} (IPv4 {embedded} inside IPv6)" if reason else None
        return _refusal_v6(ip)
    return _refusal_v4(ip)


def addresses_refusal(addresses: list[str]) -> tuple[str, str] | None:
    """(address, reason) for the first address that may not be reached, or None if all may."""
    if not addresses:
        return ("", "no address")
    for address in addresses:
        reason = address_refusal(address)
        if reason:
            return (address, reason)
    return None


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    for net in _NAT64:
        if ip in net:
            return IPv4Address(int(ip) & 0xFFFFFFFF)
    # ::a.b.c.d (deprecated IPv4-compatible); `::` and `::1` are judged as IPv6 below.
    if ip in _IPV4_COMPAT and int(ip) > 1:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _refusal_v4(ip: IPv4Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata)" if str(ip) == "169.254.169.254" else "link-local"
    if ip in _CGNAT:
        return "carrier-grade NAT"
    if ip.is_multicast:
        return "multicast"
    for net, name in _EXTRA_V4:
        if ip in net:
            return name
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not global"
    return None


def _refusal_v6(ip: IPv6Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip in _ULA:
        return "unique local (private)"
    if ip.is_site_local:
        return "site-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _6TO4:
        return "6to4"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not global"
    return None


# Never trustable, whatever an operator writes: the host itself, the cloud metadata service,
# and addresses that are not one host.
_NEVER_TRUSTED = (
    IPv4Network("127.0.0.0/8"),
    IPv4Network("169.254.0.0/16"),
    IPv4Network("0.0.0.0/8"),
    IPv4Network("224.0.0.0/4"),
    IPv4Network("240.0.0.0/4"),
    IPv6Network("::1/128"),
    IPv6Network("::/128"),
    IPv6Network("fe80::/10"),
    IPv6Network("ff00::/8"),
    IPv6Network("::ffff:0:0/96"),
)


def index_ranges_parse(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """`CONVOY_EGRESS_INDEX_ADDRESSES` ("198.51.100.10/32,10.20.0.0/16") → networks.

    The ranges the host's own package indexes are served from when those are not public (a
    mirror on the LAN, a routed test range): names from `package_indexes: true` may resolve
    there; campaign `allow:` names never may. Loopback, link-local (cloud metadata),
    multicast, unspecified and reserved ranges are refused (ValueError naming the entry)."""
    ranges = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as e:
            raise ValueError(f"{item!r} is not an address range such as 10.20.0.0/16 ({e})") from e
        if net.prefixlen == 0 or any(
            net.version == bad.version and net.overlaps(bad) for bad in _NEVER_TRUSTED
        ):
            raise ValueError(
                f"{item!r} includes loopback, link-local (cloud metadata), multicast or "
                "reserved addresses, which a sandbox may never reach"
            )
        ranges.append(net)
    return tuple(ranges)


def in_ranges(address: str, ranges) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in ranges)
