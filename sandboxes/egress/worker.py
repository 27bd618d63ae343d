"""This worker process's egress proxy: started on first use, fresh in a forked child.

Celery's prefork children and the embedded server each call `egress_proxy()`; the proxy's
sockets live under `DATA_DIR/egress/<pid>/`, so two workers on one host never collide.
Internal routes (`egress_route_add`, for the model gateway) are kept here too, so a proxy made
again after a fork gets them.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from sandboxes.egress.addresses import host_addresses_parse, index_ranges_parse
from sandboxes.egress.policy import normalise_host
from sandboxes.egress.proxy import EgressProxy
from sandboxes.egress.routes import Route, route_make, test_hosts_parse

TEST_HOSTS_VAR = "CONVOY_EGRESS_TEST_HOSTS"
INDEX_ADDRESSES_VAR = "CONVOY_EGRESS_INDEX_ADDRESSES"
HOST_ADDRESSES_VAR = "CONVOY_EGRESS_HOST_ADDRESSES"

_lock = threading.Lock()
_proxy: EgressProxy | None = None
_pid = 0
_routes: dict[tuple[str, int], Route] = {}


def test_hosts_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test-only name mapping (`api.test=127.0.0.1,…`); refused outside the test suite."""
    env = os.environ if env is None else env
    text = env.get(TEST_HOSTS_VAR, "")
    if not text:
        return {}
    if not settings.EGRESS_TEST_HOSTS_ALLOWED:
        raise ImproperlyConfigured(f"{TEST_HOSTS_VAR} is for the test suite only")
    return test_hosts_parse(text)


def index_ranges_from_settings() -> tuple:
    try:
        return index_ranges_parse(settings.EGRESS_INDEX_ADDRESSES)
    except ValueError as e:
        raise ImproperlyConfigured(f"{INDEX_ADDRESSES_VAR}: {e}") from e


def host_addresses_from_settings() -> tuple:
    try:
        return host_addresses_parse(settings.EGRESS_HOST_ADDRESSES)
    except ValueError as e:
        raise ImproperlyConfigured(f"{HOST_ADDRESSES_VAR}: {e}") from e


def egress_root() -> Path:
    return Path(settings.DATA_DIR) / "egress" / str(os.getpid())


def egress_proxy() -> EgressProxy:
    """This process's running proxy (created and started on first use)."""
    global _proxy, _pid
    with _lock:
        if _proxy is None or _pid != os.getpid():
            # A forked child inherits the parent's object but not its thread.
            _proxy = EgressProxy(
                egress_root(),
                test_hosts=test_hosts_from_env(),
                index_ranges=index_ranges_from_settings(),
                host_addresses=host_addresses_from_settings(),
                host_proxy_by_name=settings.EGRESS_HOST_PROXY_BY_NAME,
            )
            for route in _routes.values():
                _proxy.route_add(route.name, route.port, route.target, identify=route.identify)
            _pid = os.getpid()
        return _proxy.start()


def egress_proxy_if_running() -> EgressProxy | None:
    """This process's proxy if it was started here (never starts one)."""
    with _lock:
        if _proxy is not None and _pid == os.getpid() and _proxy.running:
            return _proxy
    return None


def egress_route_add(
    name: str, port: int, target: str | os.PathLike | int, *, identify: bool = False
) -> None:
    """Route `name:port` to an internal service of this host (a UNIX socket path or a port on
    127.0.0.1) in this process's proxy, now and after a fork. Sandboxes reach it only when
    their policy allows `name:port` (e.g. `allowed_domains=[f"{name}:{port}"]`)."""
    route = route_make(name, port, target, identify=identify)
    with _lock:
        _routes[(route.name, route.port)] = route
        proxy = _proxy if _pid == os.getpid() else None
    if proxy is not None:
        proxy.route_add(route.name, route.port, route.target, identify=route.identify)


def egress_route_remove(name: str, port: int) -> None:
    with _lock:
        _routes.pop((normalise_host(name), port), None)
        proxy = _proxy if _pid == os.getpid() else None
    if proxy is not None:
        proxy.route_remove(name, port)


def egress_proxy_stop() -> None:
    """Stop this process's proxy and remove its sockets; idempotent."""
    global _proxy
    with _lock:
        proxy, _proxy = (_proxy, None) if _pid == os.getpid() else (None, None)
    if proxy is not None:
        proxy.stop()
        shutil.rmtree(proxy.root, ignore_errors=True)


def egress_dirs_sweep() -> list[str]:
    """Remove the socket directories of worker processes that are gone; return their pids."""
    base = Path(settings.DATA_DIR) / "egress"
    removed = []
    for entry in base.glob("*"):
        if not (entry.name.isascii() and entry.name.isdigit()) or _pid_alive(int(entry.name)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
