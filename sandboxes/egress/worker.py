"""This worker process's egress proxy: started on first use, fresh in a forked child.

Celery's prefork children and the embedded server each call `egress_proxy()`; the proxy's
sockets live under `DATA_DIR/egress/<pid>/`, so two workers on one host never collide.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from sandboxes.egress.proxy import EgressProxy, test_hosts_parse

TEST_HOSTS_VAR = "CONVOY_EGRESS_TEST_HOSTS"

_lock = threading.Lock()
_proxy: EgressProxy | None = None
_pid = 0


def test_hosts_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test-only name mapping (`api.test=127.0.0.1,…`); refused outside the test suite."""
    env = os.environ if env is None else env
    text = env.get(TEST_HOSTS_VAR, "")
    if not text:
        return {}
    if not settings.TESTING:
        raise ImproperlyConfigured(f"{TEST_HOSTS_VAR} is for the test suite only")
    return test_hosts_parse(text)


def egress_root() -> Path:
    return Path(settings.DATA_DIR) / "egress" / str(os.getpid())


def egress_proxy() -> EgressProxy:
    """This process's running proxy (created and started on first use)."""
    global _proxy, _pid
    with _lock:
        if _proxy is None or _pid != os.getpid():
            # A forked child inherits the parent's object but not its thread.
            _proxy = EgressProxy(egress_root(), test_hosts=test_hosts_from_env())
            _pid = os.getpid()
        return _proxy.start()


def egress_proxy_stop() -> None:
    """Stop this process's proxy and remove its sockets; idempotent."""
    global _proxy
    with _lock:
        proxy, _proxy = (_proxy, None) if _pid == os.getpid() else (None, None)
    if proxy is not None:
        proxy.stop()
        shutil.rmtree(proxy.root, ignore_errors=True)
