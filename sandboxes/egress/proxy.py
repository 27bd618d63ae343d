"""The egress proxy: one asyncio server per worker process, one UNIX socket per sandbox.

Each sandbox gets its own socket (in its own directory, mounted into that sandbox only), so
the socket a connection arrives on says whose policy applies: no token to steal or forge.
The proxy speaks HTTP CONNECT (TLS passes through untouched; on TLS ports the whole
ClientHello is read first, and must name the CONNECT host and no other) and plain-HTTP
absolute-URI requests. It resolves names itself, refuses when any address is not public,
connects only to the addresses it vetted, counts bytes against the sandbox's limit, and
reports every attempt as an `EgressEvent`.

It runs in a background thread with its own event loop, so Celery workers and the embedded
server use it the same way: `start()`, `sandbox_open(...)`, `sandbox_close(...)`, `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import resource
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core.errors import Invalid
from sandboxes.backends.host_user import sandbox_host_group
from sandboxes.egress.addresses import HostAddresses, address_refusal, in_ranges
from sandboxes.egress.events import EgressEvent, EgressStats
from sandboxes.egress.policy import Limits, NetworkPolicy, normalise_host
from sandboxes.egress.routes import Route, route_make, route_open
from sandboxes.egress.wire import (
    CHUNKED,
    UNTIL_CLOSE,
    BadHello,
    BadRequest,
    ClientHelloReader,
    RequestHead,
    UpstreamConfig,
    UpstreamProxy,
    client_hello_refusal,
    hostport_split,
    request_body_framing,
    request_head_parse,
    response_body_framing,
    response_head_parse,
)

log = logging.getLogger(__name__)

EventCallback = Callable[[EgressEvent], None]
SOCKET_NAME = "proxy.sock"
HEAD_LIMIT = 64 * 1024
CHUNK = 256 * 1024
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
# Hop-by-hop and proxy headers never go upstream on a plain-HTTP request (nor back).
_DROP_HEADERS = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# A connection that has not sent its request head by then is closed: it holds a descriptor.
HEAD_TIMEOUT_S = 5.0
# The loop's own errors (e.g. "socket.accept() out of system resource", once per listening
# socket per second while descriptors run out) are logged at most this often per message.
_LOOP_ERROR_EVERY_S = 60.0
# How long starting the proxy waits for the first read of the host's own addresses.
HOST_ADDRESSES_WAIT_S = 2.0
# Unix socket paths are limited to 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107


class _Cut(Exception):
    """A transfer stopped by the sandbox's byte limit (the event already says so)."""


class _Ended(Exception):
    """An exchange over before its answer was complete: a limit, a side closed or broken
    (the event already says what it can)."""


class _Refused(Exception):
    def __init__(
        self, code: str, reason: str, *, status: int = 403, allowed: bool = False, answer=True
    ):
        super().__init__(reason)
        self.code, self.reason, self.status, self.allowed = code, reason, status, allowed
        # False once the tunnel is up: the client speaks TLS, an HTTP answer would be noise.
        self.answer = answer


@dataclass
class _Sandbox:
    key: str
    policy: NetworkPolicy
    limits: Limits
    on_event: EventCallback | None
    directory: Path
    server: asyncio.AbstractServer | None = None
    bytes_used: int = 0
    tasks: set[asyncio.Task] = field(default_factory=set)
    stats: EgressStats = field(default_factory=EgressStats)
    closed: bool = False
    # Set when a transfer was cut at the limit (bytes_used stays just under it).
    exhausted: bool = False

    @property
    def socket_path(self) -> Path:
        return self.directory / SOCKET_NAME


class EgressProxy:
    """This process's egress proxy. Thread-safe; every public method may be called from any
    thread except the proxy's own.

    `test_hosts` maps names to addresses without DNS, and lets a mapped name reach loopback
    (never any other non-public range): only when `settings.EGRESS_TEST_HOSTS_ALLOWED` (the
    test suite and the workers it starts), so a production
    process refuses to start with it.
    """

    def __init__(
        self,
        root: Path,
        *,
        upstream: UpstreamConfig | None = None,
        upstream_resolves_names: bool = False,
        host_proxy_by_name: bool = False,
        test_hosts: Mapping[str, str] | None = None,
        check_sni: bool = True,
        sni_ports: frozenset[int] = frozenset({443}),
        http_ports: frozenset[int] = frozenset({80}),
        socket_mode: int = 0o600,
        socket_group: int | None = None,
        resolve_timeout_s: float = 10.0,
        index_ranges: tuple = (),
        host_addresses: tuple = (),
        head_timeout_s: float = HEAD_TIMEOUT_S,
        max_open_connections: int | None = None,
    ):
        if test_hosts and not settings.EGRESS_TEST_HOSTS_ALLOWED:
            raise ImproperlyConfigured(
                "egress test host mapping is for the test suite only; production refuses it"
            )
        self.root = Path(root)
        self.upstream = upstream if upstream is not None else UpstreamConfig.from_env()
        # With a host proxy in front, local DNS may not know public names: then the host's
        # proxy resolves them (its own policy applies). Off by default.
        self.upstream_resolves_names = upstream_resolves_names
        # The host's proxy is asked for the address this proxy checked, not the name: it would
        # resolve the name again, and a DNS answer that changed in between (rebinding) would
        # take the connection wherever the host's proxy can reach (its own loopback, the
        # Convoy host). By name only for host proxies that filter by name (the operator's
        # CONVOY_EGRESS_HOST_PROXY_BY_NAME), whose own rules must then refuse such addresses.
        self.host_proxy_by_name = host_proxy_by_name
        self.test_hosts = {normalise_host(k): v for k, v in (test_hosts or {}).items()}
        self.check_sni = check_sni
        # Only ports where the client speaks first with TLS: server-speaks-first protocols
        # (SSH, SMTP) would stall waiting for a ClientHello that never comes. On these ports
        # anything but a ClientHello naming the CONNECT host is refused.
        self.sni_ports = sni_ports
        # Ports where a CONNECT tunnel must carry plain HTTP: its one request is judged by its
        # Host as an absolute-URL request is (a tunnel to an allowed name's port 80 carried
        # requests for any name served at that address).
        self.http_ports = http_ports
        self.socket_mode = socket_mode
        # Where bwrap sandboxes run as their own host users (`host_user`: a root worker), their
        # passage group may pass through the proxy's root; each sandbox's directory is the
        # worker's alone (0700) until bwrap gives it to that sandbox's own group.
        if socket_group is None:
            socket_group = sandbox_host_group()
        self.socket_group = socket_group
        self.resolve_timeout_s = resolve_timeout_s
        # Operator-trusted ranges for the host's package indexes (see index_ranges_parse).
        self.index_ranges = tuple(index_ranges)
        # The host's own addresses (its interfaces' and the operator's CONVOY_EGRESS_HOST_
        # ADDRESSES): public by class, but they reach whatever the host serves on 0.0.0.0.
        self.host_addresses = HostAddresses(host_addresses)
        self.head_timeout_s = head_timeout_s
        # All sandboxes together, so that many sandboxes cannot run the process (the Celery
        # worker or the embedded server) out of descriptors: see open_connections_max().
        self.max_open_connections = max_open_connections or open_connections_max()
        self._open_connections = 0  # the proxy's thread only
        self._loop_errors: dict[str, list] = {}  # message -> [last logged, suppressed since]
        self._routes: dict[tuple[str, int], Route] = {}
        self._sandboxes: dict[str, _Sandbox] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- lifecycle (any thread) -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EgressProxy:
        """Start the proxy's thread and loop; a second call does nothing."""
        with self._lock:
            if self.running:
                return self
            self.root.mkdir(parents=True, exist_ok=True)
            self._private(self.root)
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.set_exception_handler(self._loop_error)
                loop.call_soon(ready.set)
                loop.run_forever()
                loop.close()

            self._loop = loop
            self._thread = threading.Thread(target=run, name="egress-proxy", daemon=True)
            self._thread.start()
            ready.wait()
            # Read in a thread of their own (never on the loop); the first connections need
            # them, so give the first read a moment (a slow one: they are refused till then).
            self.host_addresses.start(wait_s=HOST_ADDRESSES_WAIT_S)
        return self

    def stop(self) -> None:
        """Close every sandbox's socket and connections, then the loop; idempotent."""
        with self._lock:
            if not self.running or self._loop is None:
                return
            for key in list(self._sandboxes):
                self._call(self._close(key))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self.host_addresses.stop()
            self._thread.join(timeout=10)
            self._thread = None
            self._loop = None

    def sandbox_open(
        self,
        sandbox_key: str,
        policy: NetworkPolicy,
        limits: Limits | None = None,
        on_event: EventCallback | None = None,
    ) -> Path:
        """Create the sandbox's socket and return its path (mount its directory into the
        sandbox). Opening an open sandbox again replaces its policy, limits and callback."""
        if not _KEY.match(sandbox_key):
            raise Invalid(f"bad sandbox key {sandbox_key!r}", field="sandbox_key")
        self.start()
        return self._call(self._open(sandbox_key, policy, limits or Limits(), on_event))

    def sandbox_close(self, sandbox_key: str) -> None:
        """Remove the socket, end the sandbox's connections (their events are reported)."""
        if self.running:
            self._call(self._close(sandbox_key))

    def route_add(self, name: str, port: int, target: str | os.PathLike | int, **kw) -> None:
        """Send `name:port` to an internal service: a host UNIX socket path or a port on
        127.0.0.1 (sandboxes.egress.routes, `identify=`); only sandboxes whose policy allows
        `name:port` reach it, and only by that name. Replaces an earlier route for it."""
        route = route_make(name, port, target, **kw)
        with self._lock:
            self._routes[(route.name, route.port)] = route

    def route_remove(self, name: str, port: int) -> None:
        with self._lock:
            self._routes.pop((normalise_host(name), port), None)

    def sandbox_keys(self) -> list[str]:
        return list(self._sandboxes.copy())  # copy() is atomic; the loop may be changing it

    def sandbox_stats(self, sandbox_key: str) -> EgressStats | None:
        sb = self._sandboxes.get(sandbox_key)
        if sb is None:
            return None
        s = sb.stats
        return EgressStats(s.connections, s.refused, len(sb.tasks), sb.bytes_used, set(s.hosts))

    def _call(self, coro):
        if self._loop is None:
            raise RuntimeError("egress proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # ---- per-sandbox servers (proxy thread) --------------------------------------------

    async def _open(self, key: str, policy, limits, on_event) -> Path:
        existing = self._sandboxes.get(key)
        if existing is not None:
            existing.policy, existing.limits, existing.on_event = policy, limits, on_event
            return existing.socket_path
        # A short hashed directory name keeps the path under the 107-byte limit.
        directory = self.root / hashlib.sha256(key.encode()).hexdigest()[:16]
        sb = _Sandbox(key, policy, limits, on_event, directory)
        if len(os.fsencode(sb.socket_path)) > _SUN_PATH_MAX:
            raise Invalid(
                f"egress socket path {sb.socket_path} is longer than {_SUN_PATH_MAX} bytes; "
                "use a shorter CONVOY_DATA_DIR",
                field="CONVOY_DATA_DIR",
            )
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700, parents=True)
        sb.server = await asyncio.start_unix_server(
            lambda r, w: self._serve(sb, r, w), path=str(sb.socket_path), limit=HEAD_LIMIT
        )
        if self.socket_group is None:
            os.chmod(sb.socket_path, self.socket_mode)
        else:
            os.chown(sb.socket_path, -1, self.socket_group)
            os.chmod(sb.socket_path, self.socket_mode | 0o060)
        self._sandboxes[key] = sb
        return sb.socket_path

    def _private(self, directory: Path) -> None:
        """The worker's alone (0700), but for the sandboxes' host group's search permission."""
        if self.socket_group is None:
            os.chmod(directory, 0o700)
        else:
            os.chown(directory, -1, self.socket_group)
            os.chmod(directory, 0o710)  # noqa: S103 (the group may only pass through)

    async def _close(self, key: str) -> None:
        sb = self._sandboxes.pop(key, None)
        if sb is None:
            return
        sb.closed = True
        if sb.server is not None:
            sb.server.close()
        for task in list(sb.tasks):
            task.cancel()
        if sb.tasks:
            await asyncio.wait(list(sb.tasks), timeout=5)
        shutil.rmtree(sb.directory, ignore_errors=True)

    # ---- one client connection ----------------------------------------------------------

    def _loop_error(self, loop, context: dict) -> None:
        """The loop's exception handler, rate-limited per message: a sandbox must not be able
        to fill the worker's log (it logged 46 MB in 10 s while descriptors ran out)."""
        message = str(context.get("message", "unhandled error in the egress proxy's loop"))
        now = time.monotonic()
        seen = self._loop_errors.setdefault(message, [-_LOOP_ERROR_EVERY_S, 0])
        if now - seen[0] < _LOOP_ERROR_EVERY_S:
            seen[1] += 1
            return
        if seen[1]:
            context = {**context, "message": f"{message} ({seen[1]} more since last logged)"}
        seen[0], seen[1] = now, 0
        loop.default_exception_handler(context)

    def _refuse_at_accept(self, sb: _Sandbox, writer) -> bool:
        """Close a connection at once when its sandbox, or the proxy as a whole, already has
        its maximum open: held until its head arrives, each would keep a descriptor."""
        if len(sb.tasks) >= sb.limits.max_connections:
            status, reason = 403, f"more than {sb.limits.max_connections} concurrent connections"
        elif self._open_connections >= self.max_open_connections:
            status, reason = 503, "the egress proxy has too many open connections"
        else:
            return False
        body = (reason + "\n").encode()
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            writer.write(  # into the transport's buffer: no waiting on the client
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        writer.close()
        event = EgressEvent(sandbox_key=sb.key, method="?", started_at=time.time())
        event.code, event.reason, event.status = "limit", reason, status
        self._emit(sb, event)
        return True

    async def _serve(self, sb: _Sandbox, reader, writer) -> None:
        if self._refuse_at_accept(sb, writer):
            return
        task = asyncio.current_task()
        sb.tasks.add(task)
        self._open_connections += 1
        event = EgressEvent(sandbox_key=sb.key, started_at=time.time())
        began = time.monotonic()
        try:
            await self._handle(sb, reader, writer, event)
        except _Refused as r:
            event.allowed, event.code, event.reason, event.status = (
                r.allowed,
                r.code,
                r.reason,
                r.status,
            )
            with contextlib.suppress(ConnectionError, RuntimeError):
                if not r.answer:
                    return
                body = (r.reason + "\n").encode()
                writer.write(
                    f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Error')}\r\n"
                    f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except asyncio.CancelledError:
            event.code = event.code if event.code not in ("", "ok") else "closed"
            event.reason = event.reason or "sandbox closed"
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
            if not event.code:
                event.code, event.reason = "closed", f"client went away ({type(e).__name__})"
        finally:
            sb.tasks.discard(task)
            self._open_connections -= 1
            writer.close()
            event.duration_s = time.monotonic() - began
            if event.method:
                self._emit(sb, event)

    def _emit(self, sb: _Sandbox, event: EgressEvent) -> None:
        sb.stats.connections += 1
        sb.stats.refused += not event.allowed
        if event.host:
            sb.stats.hosts.add(event.host)
        if sb.on_event is None:
            return
        try:
            sb.on_event(event)
        except Exception:
            log.exception("egress on_event callback failed for %s", sb.key)

    async def _handle(self, sb: _Sandbox, reader, writer, event: EgressEvent) -> None:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout_s)
        except asyncio.LimitOverrunError as e:
            event.method = "?"
            raise _Refused("bad_request", "request head too large", status=400) from e
        try:
            head = request_head_parse(raw)
        except BadRequest as e:
            event.method = "?"
            raise _Refused("bad_request", str(e), status=400) from e
        event.method = head.method
        if head.method == "CONNECT":
            await self._tunnel(sb, head, reader, writer, event)
        elif head.target.startswith("http://"):
            await self._forward(sb, head, raw, reader, writer, event)
        else:
            raise _Refused(
                "bad_request",
                "this is a proxy: send CONNECT host:port, or an absolute http:// URL",
                status=400,
            )

    async def _tunnel(self, sb, head: RequestHead, reader, writer, event) -> None:
        try:
            host, port = hostport_split(head.target)
        except BadRequest as e:
            raise _Refused("bad_request", str(e), status=400) from e
        event.host, event.port = host, port
        up_reader, up_writer = await self._connect(sb, host, port, event, tunnel=True)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            if port in self.http_ports:
                await self._tunnel_http(sb, host, port, reader, writer, up_reader, up_writer, event)
                return
            if self.check_sni and port in self.sni_ports:
                hello = await self._client_hello(reader, host)
                if sb.bytes_used + len(hello) > sb.limits.egress_bytes:
                    sb.exhausted = True
                    reason = f"egress limit of {sb.limits.egress_mb} MB reached"
                    raise _Refused("limit", reason, allowed=True, answer=False)
                self._count(sb, event, up=len(hello))
                up_writer.write(hello)
            await self._pipe(sb, reader, writer, up_reader, up_writer, event)
        finally:
            up_writer.close()

    async def _client_hello(self, reader, host: str) -> bytes:
        """The client's ClientHello, read whole (it may come in several records) within the
        head timeout, as the bytes to forward; _Refused unless it names `host`, and only
        `host`. Nothing goes upstream before: a name the proxy cannot read (split records,
        bytes that are not TLS, an encrypted hello, none at all) is a name it cannot judge."""
        hello_reader = ClientHelloReader()
        hello = None
        try:
            async with asyncio.timeout(self.head_timeout_s):
                while hello is None:
                    chunk = await reader.read(hello_reader.wanted())
                    if not chunk:  # nothing went upstream: closed, not refused
                        why = "the client closed before its TLS ClientHello ended"
                        raise _Refused("closed", why, allowed=True, answer=False)
                    hello = hello_reader.feed(chunk)
        except TimeoutError:
            reason = f"no whole TLS ClientHello within {self.head_timeout_s:g} s"
            raise _Refused("sni", reason, answer=False) from None
        except BadHello as e:
            raise _Refused("sni", str(e), answer=False) from None
        if why := client_hello_refusal(hello, host):
            raise _Refused("sni", why, answer=False)
        return bytes(hello_reader.data)

    async def _forward(self, sb, head: RequestHead, raw: bytes, reader, writer, event) -> None:
        url = urlsplit(head.target)
        try:
            host, port = hostport_split(url.netloc.rpartition("@")[2], default_port=80)
        except BadRequest as e:
            raise _Refused("bad_request", str(e), status=400) from e
        event.host, event.port = host, port
        given = self._host_header_check(head, host, port)
        framing = self._framing(head)
        up_reader, up_writer = await self._connect(sb, host, port, event, tunnel=False)
        upstream = (
            None if event.via.startswith("route") else self.upstream.for_target(host, tunnel=False)
        )
        try:
            path = url.path or "/"
            query = f"?{url.query}" if url.query else ""
            target = path + query
            by_address = upstream and event.address and not self.host_proxy_by_name
            if by_address:  # the checked address, as CONNECT asks for it
                name = f"[{event.address}]" if ":" in event.address else event.address
                target = f"http://{name}:{port}{target}"
            elif upstream:  # the host's proxy resolves the name (see `host_proxy_by_name`)
                target = head.target
            extra = [] if given is not None else [f"Host: {url.netloc.rpartition('@')[2]}"]
            if upstream and upstream.authorization:
                extra.append(f"Proxy-Authorization: {upstream.authorization}")
            out = self._request_out(head, target, extra)
            ends = (reader, writer, up_reader, up_writer)
            await self._exchange(sb, head.method, out, framing, *ends, event)
        finally:
            up_writer.close()

    async def _tunnel_http(self, sb, host, port, reader, writer, up_reader, up_writer, event):
        """A CONNECT tunnel to an HTTP port carries one request, judged as an absolute-URL
        request is: its Host must be the CONNECT host (the tunnel reaches that name's address,
        where other names may be served too)."""
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout_s)
        except asyncio.LimitOverrunError as e:
            raise _Refused("bad_request", "request head too large", status=400) from e
        try:
            head = request_head_parse(raw)
        except BadRequest as e:
            raise _Refused("bad_request", str(e), status=400) from e
        target = head.target
        if target.startswith("http://"):
            url = urlsplit(target)
            try:
                named = hostport_split(url.netloc.rpartition("@")[2], default_port=80)
            except BadRequest as e:
                raise _Refused("bad_request", str(e), status=400) from e
            if named != (host, port):
                raise _Refused(
                    "bad_request",
                    f"request for {url.netloc} in a tunnel to {host}:{port}",
                    status=400,
                )
            target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        elif not target.startswith("/"):
            raise _Refused(
                "bad_request", f"port {port} carries HTTP here: not a request", status=400
            )
        if self._host_header_check(head, host, port) is None:
            raise _Refused(
                "bad_request", f"the request in a tunnel to port {port} has no Host", status=400
            )
        framing = self._framing(head)
        out = self._request_out(head, target, [])
        ends = (reader, writer, up_reader, up_writer)
        await self._exchange(sb, head.method, out, framing, *ends, event)

    @staticmethod
    def _host_header_check(head: RequestHead, host: str, port: int) -> str | None:
        given = head.header("host")
        if len([k for k, _ in head.headers if k.lower() == "host"]) > 1:
            raise _Refused("bad_request", "several Host headers", status=400)
        if given is not None:
            try:
                same = hostport_split(given, default_port=80) == (host, port)
            except BadRequest:
                same = False
            if not same:
                raise _Refused(
                    "bad_request",
                    f"Host header {given} does not match the URL's host {host}:{port}",
                    status=400,
                )
        return given

    @staticmethod
    def _framing(head: RequestHead) -> int:
        try:
            return request_body_framing(head)
        except BadRequest as e:
            raise _Refused("bad_request", str(e), status=400) from e

    @staticmethod
    def _request_out(head: RequestHead, target: str, extra: list[str]) -> bytes:
        lines = [f"{head.method} {target} {head.version}"]
        lines += [f"{k}: {v}" for k, v in head.headers if k.lower() not in _DROP_HEADERS]
        lines += extra
        # One request per connection: the proxy forwards this request's body and nothing
        # after it, so a second request is never sent where this one's name was judged.
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    # ---- admission and connecting --------------------------------------------------------

    async def _admit(self, sb: _Sandbox, host: str, port: int, event) -> list[str] | Route:
        """The vetted addresses for host:port, or _Refused with the reason. Empty list: the
        host's proxy resolves the name (only with upstream_resolves_names). A Route: an
        internal service added with route_add."""
        if sb.closed:
            raise _Refused("closed", "sandbox closed")
        if sb.exhausted or sb.bytes_used >= sb.limits.egress_bytes:
            raise _Refused("limit", f"egress limit of {sb.limits.egress_mb} MB reached")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            event.address = str(literal)
            why = address_refusal(literal)
            raise _Refused(
                "address" if why else "ip_literal",
                why or "IP address: network.allow takes host names only",
            )
        if not sb.policy.allows(host, port):
            raise _Refused("not_allowed", "not in network.allow")
        route = self._routes.get((normalise_host(host), port))
        if route is not None:
            return route
        # The host's own package indexes may live in ranges the operator vouches for.
        trusted = bool(self.index_ranges) and any(
            r.index and r.matches(host, port) for r in sb.policy.rules
        )
        mapped = self.test_hosts.get(host)
        if mapped is not None:
            addresses = [mapped]
        else:
            try:
                infos = await asyncio.wait_for(
                    asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    self.resolve_timeout_s,
                )
            except (OSError, TimeoutError) as e:
                if self.upstream_resolves_names and self.upstream.for_target(host, tunnel=True):
                    return []
                raise _Refused("dns", f"name does not resolve ({e})", status=502) from e
            addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            why = address_refusal(address)
            if why == "loopback" and mapped is not None:
                continue  # the test mapping's upstream on loopback (tests only)
            if why and trusted and in_ranges(address, self.index_ranges):
                why = None
            # Never the host itself, whatever the class or the operator's index ranges say.
            if not why and (unknown := self.host_addresses.unavailable()):
                event.address = address
                raise _Refused("host_addresses", f"{unknown}: egress is refused", status=503)
            why = why or self.host_addresses.refusal(address)
            if why:
                event.address = address
                raise _Refused("address", f"resolves to {address}: {why}")
        event.address = addresses[0] if addresses else None
        return addresses

    async def _connect(self, sb, host: str, port: int, event, *, tunnel: bool):
        addresses = await self._admit(sb, host, port, event)
        timeout = sb.limits.connect_timeout_s
        if isinstance(addresses, Route):
            return await self._connect_route(sb, addresses, event, timeout)
        upstream = self.upstream.for_target(host, tunnel=tunnel)
        if upstream is not None:
            event.via = f"proxy {upstream.host}:{upstream.port}"
            if self.host_proxy_by_name or not addresses:  # [] : the host's proxy resolves it
                return await self._connect_upstream(upstream, host, port, timeout, tunnel=tunnel)
            refused = None
            for address in addresses if tunnel else addresses[:1]:
                try:
                    up = await self._connect_upstream(
                        upstream, address, port, timeout, tunnel=tunnel
                    )
                except _Refused as e:
                    refused = e
                    continue
                event.address = address  # what the host's proxy was asked for
                return up
            raise refused
        errors = []
        for address in addresses:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(address, port, limit=CHUNK), timeout
                )
            except (OSError, TimeoutError) as e:
                errors.append(f"{address}: {str(e) or type(e).__name__}")
                continue
            event.address = address
            event.allowed = True
            return r, w
        raise _Refused("connect_failed", "; ".join(errors), status=502, allowed=True)

    async def _connect_route(self, sb, route: Route, event, timeout: float):
        event.via = str(route)
        try:
            r, w = await route_open(route, timeout, caller=sb.key)
        except (OSError, TimeoutError) as e:
            raise _Refused(
                "connect_failed", f"{route.name} is not answering: {e}", status=502, allowed=True
            ) from e
        event.allowed = True
        return r, w

    async def _connect_upstream(self, upstream: UpstreamProxy, host, port, timeout, *, tunnel):
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port, limit=CHUNK), timeout
            )
        except (OSError, TimeoutError) as e:
            raise _Refused(
                "upstream", f"host proxy unreachable: {e}", status=502, allowed=True
            ) from e
        if not tunnel:
            return r, w
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        auth = ""
        if upstream.authorization:
            auth = f"Proxy-Authorization: {upstream.authorization}\r\n"
        w.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        try:
            answer = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            w.close()
            raise _Refused(
                "upstream", "host proxy closed the tunnel", status=502, allowed=True
            ) from e
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            w.close()
            raise _Refused(
                "upstream", f"host proxy answered {status_line!r}", status=502, allowed=True
            )
        return r, w

    # ---- moving bytes --------------------------------------------------------------------

    def _count(self, sb: _Sandbox, event, *, up: int = 0, down: int = 0) -> None:
        sb.bytes_used += up + down
        event.bytes_up += up
        event.bytes_down += down

    def _send(self, sb: _Sandbox, event, dst, data: bytes, *, up: bool) -> None:
        """Count `data` against the sandbox's limit and write it; _Cut past the limit."""
        if sb.bytes_used + len(data) > sb.limits.egress_bytes:
            sb.exhausted = True
            event.code = "limit"
            event.reason = f"egress limit of {sb.limits.egress_mb} MB reached"
            raise _Cut
        self._count(sb, event, up=len(data) if up else 0, down=0 if up else len(data))
        dst.write(data)

    async def _body_copy(self, sb, event, src, dst, framing: int, *, up: bool, last) -> None:
        """Copy one message body from `src` to `dst` as `framing` delimits it, and nothing
        after it. Chunked bodies are written again in canonical form (sizes in hex, no
        extensions, no trailers), so the upstream reads the chunks the proxy read."""

        async def move(n: int | None) -> None:
            while n is None or n > 0:
                data = await src.read(CHUNK if n is None else min(n, CHUNK))
                if not data:
                    if n is None:
                        return
                    raise asyncio.IncompleteReadError(b"", n)
                last[0] = time.monotonic()
                self._send(sb, event, dst, data, up=up)
                await dst.drain()
                if n is not None:
                    n -= len(data)

        if framing == UNTIL_CLOSE:
            await move(None)
        elif framing != CHUNKED:
            await move(framing)
        else:
            while True:
                line = await src.readuntil(b"\r\n")
                size_text = line[:-2].split(b";", 1)[0]
                if not size_text or len(size_text) > 15 or not set(size_text) <= _HEX:
                    raise BadRequest(f"bad chunk size line {line[:40]!r}")
                size = int(size_text, 16)
                self._send(sb, event, dst, b"%x\r\n" % size, up=up)
                if size == 0:
                    while await src.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers are not forwarded
                    self._send(sb, event, dst, b"\r\n", up=up)
                    await dst.drain()
                    return
                await move(size)
                if await src.readexactly(2) != b"\r\n":
                    raise BadRequest("a chunk does not end with CRLF")
                self._send(sb, event, dst, b"\r\n", up=up)

    async def _exchange(
        self, sb, method: str, out: bytes, framing: int, reader, writer, up_reader, up_writer, event
    ) -> None:
        """One plain-HTTP request and its answer, then the connection ends: the request's
        head (`out`, already judged) and its body go upstream, the answer comes back with
        `Connection: close`, and whatever the client sends after the body is never forwarded
        (a second request is reported, refused, as an event of its own)."""
        event.allowed = True
        event.code, event.reason, event.status = "ok", "", 200
        last = [time.monotonic()]
        answered = [False]

        async def request_side() -> None:
            self._send(sb, event, up_writer, out, up=True)
            await up_writer.drain()
            await self._body_copy(sb, event, reader, up_writer, framing, up=True, last=last)
            await self._next_request_report(sb, reader)

        async def answer_side() -> None:
            while True:
                try:
                    raw = await up_reader.readuntil(b"\r\n\r\n")
                    answer = response_head_parse(raw)
                except asyncio.LimitOverrunError as e:
                    raise BadRequest("the answer's head is too large") from e
                except BadRequest as e:
                    raise _Refused("upstream", str(e), status=502, allowed=True) from e
                last[0] = time.monotonic()
                if 100 <= answer.status < 200 and answer.status != 101:
                    self._send(sb, event, writer, raw, up=False)  # 100 Continue and the like
                    await writer.drain()
                    continue
                lines = [answer.status_line]
                lines += [f"{k}: {v}" for k, v in answer.headers if k.lower() not in _DROP_HEADERS]
                lines.append("Connection: close")
                head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
                answered[0] = True
                self._send(sb, event, writer, head, up=False)
                await writer.drain()
                body = response_body_framing(answer, method=method)
                await self._body_copy(sb, event, up_reader, writer, body, up=False, last=last)
                return

        async def idle() -> None:
            while True:
                left = sb.limits.idle_timeout_s - (time.monotonic() - last[0])
                if left <= 0:
                    event.code, event.reason = "idle", "idle timeout"
                    return
                await asyncio.sleep(min(left, 5))

        request_task = asyncio.ensure_future(request_side())
        answer_task = asyncio.ensure_future(answer_side())
        watchdog = asyncio.ensure_future(idle())
        tasks = [request_task, answer_task, watchdog]
        try:
            pending = set(tasks)
            while answer_task in pending and watchdog in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if request_task in done:
                    self._exchange_end(request_task, answered=answered[0], upstream=False)
                if answer_task in done:
                    self._exchange_end(answer_task, answered=answered[0], upstream=True)
        except _Ended:
            pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _exchange_end(task: asyncio.Task, *, answered: bool, upstream: bool) -> None:
        """Turn how one side of an exchange ended into the connection's outcome: a malformed
        request body is a 400 (a malformed answer a 502) when nothing was answered yet; a
        cut, or a side closed or broken, ends the exchange."""
        error = task.exception()
        if error is None:
            return
        if isinstance(error, BadRequest | asyncio.LimitOverrunError):
            why = str(error) if isinstance(error, BadRequest) else "a chunk size line too long"
            if upstream:
                raise _Refused("upstream", why, status=502, allowed=True, answer=not answered)
            raise _Refused("bad_request", why, status=400, answer=not answered)
        if isinstance(error, _Refused):
            error.answer = error.answer and not answered
            raise error
        if isinstance(error, _Cut | ConnectionError | OSError | asyncio.IncompleteReadError):
            raise _Ended
        raise error

    async def _next_request_report(self, sb: _Sandbox, reader) -> None:
        """What the client sends after its request's body is not forwarded: it is reported as
        a refused attempt of its own, judged by its name (one event per connection)."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raw = e.partial
        except asyncio.LimitOverrunError:
            raw = b"?"
        if not raw:
            return
        second = EgressEvent(sandbox_key=sb.key, started_at=time.time(), method="?", status=400)
        second.code = "one_request"
        second.reason = "a second request on one connection is not forwarded: send it on a new one"
        with contextlib.suppress(BadRequest):
            head = request_head_parse(raw)
            second.method = head.method
            given = head.header("host")
            if head.target.startswith("http://"):
                given = urlsplit(head.target).netloc.rpartition("@")[2]
            elif head.method == "CONNECT":
                given = head.target
            second.host, second.port = hostport_split(given or "", default_port=80)
            if not sb.policy.allows(second.host, second.port):
                second.code, second.status = "not_allowed", 403
                second.reason = "not in network.allow"
        self._emit(sb, second)

    async def _pipe(self, sb, reader, writer, up_reader, up_writer, event) -> None:
        event.allowed = True
        event.code, event.reason, event.status = "ok", "", 200
        done = asyncio.Event()
        last = [time.monotonic()]

        async def copy(src, dst, up: bool) -> None:
            try:
                while True:
                    data = await src.read(CHUNK)
                    if not data:
                        break
                    last[0] = time.monotonic()
                    if sb.bytes_used + len(data) > sb.limits.egress_bytes:
                        sb.exhausted = True
                        event.code = "limit"
                        event.reason = f"egress limit of {sb.limits.egress_mb} MB reached"
                        done.set()
                        return
                    self._count(sb, event, up=len(data) if up else 0, down=0 if up else len(data))
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                done.set()

        async def idle() -> None:
            while True:
                left = sb.limits.idle_timeout_s - (time.monotonic() - last[0])
                if left <= 0:
                    event.code, event.reason = "idle", "idle timeout"
                    done.set()
                    return
                await asyncio.sleep(min(left, 5))

        up_task = asyncio.ensure_future(copy(reader, up_writer, True))
        down_task = asyncio.ensure_future(copy(up_reader, writer, False))
        stopper = asyncio.ensure_future(done.wait())
        watchdog = asyncio.ensure_future(idle())
        tasks = [up_task, down_task, stopper, watchdog]
        try:
            # The client finishing its side only half-closes the tunnel (the answer may still
            # be coming); the far side closing, a limit or an error ends it.
            await asyncio.wait([down_task, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def open_connections_max() -> int:
    """How many connections the proxy keeps open at once, all sandboxes together: each may
    hold two descriptors (the sandbox's and the upstream's), and the process keeps a quarter
    of its descriptor limit (at least 256) for everything else it does."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 20
    reserve = max(256, soft // 4)
    return max(16, (soft - reserve) // 2)
