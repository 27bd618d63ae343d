"""Which resolved addresses a sandbox may reach: public unicast only, whatever the name said.

The proxy resolves a name once, refuses it if ANY address is not public, and connects only to
the addresses it vetted (no second lookup, so a rebinding DNS server cannot swap them).
IPv6 forms that embed an IPv4 address (mapped, compatible, 6to4, NAT64, Teredo) are judged
by the address they embed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import threading
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

log = logging.getLogger(__name__)

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


# ---- the host's own addresses --------------------------------------------------------------
# A name whose DNS answer is one of the host's own public addresses would reach whatever the
# host serves on 0.0.0.0 / [::] (the web server, PostgreSQL, Redis): the address class says
# "public", so the host's addresses are refused by identity. The kernel's local routing table
# (what `ip route show table local` prints) holds exactly the destinations this host accepts
# as its own: every interface address, secondaries and AnyIP ranges included.

_NETLINK_ROUTE = 0  # socket.NETLINK_ROUTE
_SOL_NETLINK, _NETLINK_GET_STRICT_CHK = 270, 12
_RTM_GETROUTE, _RTM_NEWROUTE = 26, 24
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTA_DST, _RTA_TABLE = 1, 15
_RT_TABLE_LOCAL = 255
_RTN_LOCAL, _RTN_ANYCAST = 2, 4
_NLMSG_HDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


def host_networks_read() -> tuple[IPv4Network | IPv6Network, ...]:
    """The destinations this host takes as its own (local and anycast routes of the local
    table), read from the kernel over netlink; OSError if it cannot be read."""
    found: set[IPv4Network | IPv6Network] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for dst, dst_len in _local_routes(family):
            found.add(ipaddress.ip_network((dst, dst_len), strict=False))
    return tuple(sorted(found, key=lambda n: (n.version, n)))


def _local_routes(family: int) -> list[tuple[str, int]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE) as s:
        s.settimeout(5)
        # With strict checking (Linux 4.20+) the kernel dumps the local table alone: a full
        # dump of every table is large on hosts with big routing tables (a full BGP table).
        # Older kernels refuse the option and dump them all; `_local_route` filters either way.
        with contextlib.suppress(OSError):
            s.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        s.bind((0, 0))
        request = _RTMSG.pack(family, 0, 0, 0, _RT_TABLE_LOCAL, 0, 0, 0, 0)
        header = _NLMSG_HDR.pack(
            _NLMSG_HDR.size + len(request), _RTM_GETROUTE, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
        )
        s.send(header + request)
        routes = []
        while True:
            data = s.recv(1 << 16)
            offset = 0
            while offset + _NLMSG_HDR.size <= len(data):
                length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data, offset)
                if length < _NLMSG_HDR.size:
                    raise OSError("malformed netlink answer")
                body = data[offset + _NLMSG_HDR.size : offset + length]
                offset += (length + 3) & ~3
                if kind == _NLMSG_DONE:
                    return routes
                if kind == _NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", body)[0]
                    if errno:
                        raise OSError(errno, "netlink route dump failed")
                    continue
                if kind == _RTM_NEWROUTE:
                    route = _local_route(body, family)
                    if route is not None:
                        routes.append(route)


def _local_route(body: bytes, family: int) -> tuple[str, int] | None:
    fam, dst_len, _, _, table, _, _, kind, _ = _RTMSG.unpack_from(body)
    if fam != family or kind not in (_RTN_LOCAL, _RTN_ANYCAST):
        return None
    dst = None
    offset = _RTMSG.size
    while offset + _RTATTR.size <= len(body):
        length, attr = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size:
            break
        value = body[offset + _RTATTR.size : offset + length]
        if attr == _RTA_TABLE:
            table = struct.unpack_from("=I", value)[0]
        elif attr == _RTA_DST:
            dst = socket.inet_ntop(family, value)
        offset += (length + 3) & ~3
    if table != _RT_TABLE_LOCAL or dst is None:
        return None
    return dst, dst_len


def host_addresses_parse(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """`CONVOY_EGRESS_HOST_ADDRESSES` ("203.0.113.7,2001:db8::/64") → networks: addresses the
    host is reached by that are not on its interfaces (a NAT's or load balancer's public
    address that forwards to it). ValueError naming a bad entry."""
    ranges = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            ranges.append(ipaddress.ip_network(item, strict=True))
        except ValueError as e:
            raise ValueError(f"{item!r} is not an address or range such as 203.0.113.7: {e}") from e
    return tuple(ranges)


class HostAddresses:
    """The host's own addresses, refused to every sandbox like loopback. A thread of their own
    reads them from the kernel every `max_age_s` (addresses come and go: DHCP, a VPN), so a
    slow read never holds up the proxy's loop: admissions use the last set read. Until a read
    has succeeded, or when the last success is older than `stale_s`, `unavailable()` says why
    and the proxy refuses every address (fail closed). Any exception of the reader counts as
    unreadable (off Linux there is no AF_NETLINK at all)."""

    def __init__(
        self,
        extra: tuple = (),
        *,
        max_age_s: float = 1.0,
        stale_s: float = 30.0,
        reader=host_networks_read,
    ):
        self.extra = tuple(extra)
        self.max_age_s = max_age_s
        self.stale_s = stale_s
        self._reader = reader
        self._networks: tuple | None = None
        self._read_at = -1e9
        self._error: str | None = None
        self._tried = threading.Event()  # set once the first read has ended, either way
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, *, wait_s: float = 0.0) -> None:
        """Start reading in the background (a second call does nothing), and wait up to
        `wait_s` for the first read to end."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._refresh_loop,
                    args=(self._stop,),
                    name="egress-host-addresses",
                    daemon=True,
                )
                self._thread.start()
        self._tried.wait(wait_s)

    def stop(self) -> None:
        """Stop reading; does not wait for a read under way (it may be the slow one)."""
        with self._lock:
            stop, self._stop, self._thread = self._stop, None, None
        if stop is not None:
            stop.set()

    def _refresh_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.refresh()
            stop.wait(self.max_age_s)

    def refresh(self) -> None:
        """Read the addresses now, in the caller's thread (the background thread's work)."""
        try:
            networks = tuple(self._reader())
        except Exception as e:  # whatever it is, the addresses are unknown
            error = f"{type(e).__name__}: {e}"
            with self._lock:
                first, self._error = self._error is None, error
            if first:  # once per outage, not once a second
                log.error("cannot read this host's addresses: %s", error)
        else:
            with self._lock:
                recovered, self._error = self._error is not None, None
                self._networks, self._read_at = networks, time.monotonic()
            if recovered:
                log.warning("this host's addresses can be read again")
        finally:
            self._tried.set()

    def networks(self) -> tuple | None:
        """The last set read, or None when none was read in the last `stale_s`."""
        if self._thread is None:
            self.start()
        with self._lock:
            if self._networks is None or time.monotonic() - self._read_at > self.stale_s:
                return None
            return self._networks

    def unavailable(self) -> str | None:
        """Why the host's addresses are not known (every address is then refused), or None."""
        if self.networks() is not None:
            return None
        with self._lock:
            error, read_at = self._error, self._read_at
        if read_at < 0:
            why = error or "not read yet"
            return f"this host's own addresses could not be read ({why})"
        age = time.monotonic() - read_at
        why = error or "the read is slow"
        return f"this host's own addresses were last read {age:.0f} s ago ({why})"

    def refusal(self, address: str) -> str | None:
        """ "this host's own address" when `address` (or the IPv4 address inside it) is one of
        the host's or the operator's; None otherwise."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "not an IP address"
        networks = self.networks()
        if networks is None:
            return "this host's addresses could not be read"
        candidates = [ip]
        if isinstance(ip, IPv6Address) and (embedded := _embedded_ipv4(ip)) is not None:
            candidates.append(embedded)
        for candidate in candidates:
            for net in (*networks, *self.extra):
                if candidate.version == net.version and candidate in net:
                    return "this host's own address"
        return None
