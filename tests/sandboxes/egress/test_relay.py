"""The relay inside real sandboxes: tools reach an allowed name through the proxy, nothing else
leaves (not the host's PostgreSQL or Redis, not the metadata address, not UDP).

The engines are run by hand here (the backends are integrated in a later phase): bwrap with
`--unshare-all`, and gVisor with `--network=none --host-uds=open` when runsc is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sandboxes.egress.policy import network_parse
from sandboxes.egress.relay import relay_binary, relay_is_static
from tests.sandboxes.egress.test_proxy import Events

PROBE = Path(__file__).with_name("probe.py")
RELAY_PORT = 3128


@pytest.fixture
def sandbox_socket(proxy, https_upstream):
    events = Events()
    allow = [f"api.test:{https_upstream.port}", "internal.test", "other.test"]
    path = proxy.sandbox_open("relay-test", network_parse({"allow": allow}), None, events.append)
    # other.test is allowed by name but unknown to the test mapping and DNS: refused as dns.
    return path, events


def _assert_contained(result: dict, https_upstream, events: Events) -> None:
    assert result["relay"] == f"listening {RELAY_PORT}"
    assert "hello from upstream" in result["urllib"]
    assert "hello from upstream" in result["curl"]
    # Loopback inside the sandbox is the sandbox's own: the host's services are not there.
    assert result["direct"] == {
        "5432": "ConnectionRefusedError",
        "6379": "ConnectionRefusedError",
        str(https_upstream.port): "ConnectionRefusedError",
    }
    assert result["udp"] == "OSError"  # Network is unreachable
    connect = result["connect"]
    assert connect["127.0.0.1:5432"] == ["HTTP/1.1 403 Forbidden", "loopback"]
    assert connect["169.254.169.254:80"] == [
        "HTTP/1.1 403 Forbidden",
        "link-local (cloud metadata)",
    ]
    assert connect["internal.test:443"] == [
        "HTTP/1.1 403 Forbidden",
        "resolves to 10.0.0.1: private",
    ]
    assert connect["other.test:443"][0] == "HTTP/1.1 502 Bad Gateway"
    assert result["relay_exit"] == 0
    events.wait(6)
    lines = {e.log_line() for e in events}
    assert "egress refused: 127.0.0.1:5432 (loopback)" in lines
    assert "egress refused: 169.254.169.254:80 (link-local (cloud metadata))" in lines
    assert sum(e.allowed and e.code == "ok" for e in events) == 2


def test_relay_is_built_once_static_and_cached(settings, short_tmp):
    data = short_tmp / "relay-data"
    first = relay_binary(data_dir=data)
    assert relay_binary(data_dir=data) == first
    assert relay_is_static(first)
    assert os.access(first, os.X_OK)
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(".relay-")] == []


@pytest.mark.skipif(not shutil.which("bwrap"), reason="bubblewrap is not installed")
def test_bwrap_sandbox_reaches_only_allowed_names(
    sandbox_socket, https_upstream, short_tmp, tls_files
):
    socket_path, events = sandbox_socket
    relay = relay_binary(data_dir=short_tmp / "relay-data")
    argv = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--bind", str(socket_path.parent), "/convoy/egress",
        "--ro-bind", str(relay), "/convoy/bin/relay",
        "--ro-bind", str(tls_files[0].parent), "/convoy/certs",
        "--ro-bind", str(PROBE), "/convoy/probe.py",
        "--clearenv",
        "--setenv", "PATH", "/usr/bin",
        "--",
        "/usr/bin/python3", "/convoy/probe.py", str(https_upstream.port), str(RELAY_PORT),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _assert_contained(json.loads(proc.stdout), https_upstream, events)


def _gvisor_bundle(directory: Path, mounts: list[tuple[str, str, bool]], args: list[str]) -> Path:
    rootfs = directory / "rootfs"
    rootfs.mkdir()
    for name in ("lib", "lib64", "bin"):
        (rootfs / name).symlink_to(f"usr/{name}")
    config = {
        "ociVersion": "1.0.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "capabilities": {},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "sandbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            *(
                {
                    "destination": dest,
                    "type": "bind",
                    "source": src,
                    "options": ["rbind", "rw" if rw else "ro"],
                }
                for src, dest, rw in mounts
            ),
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.skipif(not shutil.which("runsc"), reason="gVisor (runsc) is not installed")
def test_gvisor_sandbox_reaches_only_allowed_names(
    sandbox_socket, https_upstream, short_tmp, tls_files
):
    socket_path, events = sandbox_socket
    relay = relay_binary(data_dir=short_tmp / "relay-data")
    work = Path(tempfile.mkdtemp(prefix="gv-", dir=short_tmp))
    bundle = _gvisor_bundle(
        work,
        [
            ("/usr", "/usr", False),
            (str(socket_path.parent), "/convoy/egress", True),
            (str(relay), "/convoy/bin/relay", False),
            (str(tls_files[0].parent), "/convoy/certs", False),
            (str(PROBE), "/convoy/probe.py", False),
        ],
        ["/usr/bin/python3", "/convoy/probe.py", str(https_upstream.port), str(RELAY_PORT)],
    )
    platform = os.environ.get("CONVOY_RUNSC_PLATFORM", "ptrace")
    container = f"egress-{os.getpid()}-{work.name[3:]}"
    runsc = [
        "runsc",
        f"--root={work / 'state'}",
        f"--platform={platform}",
        "--network=none",
        "--host-uds=open",
    ]
    try:
        proc = subprocess.run(
            [*runsc, "run", "--bundle", str(bundle), container],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        subprocess.run([*runsc, "delete", "-force", container], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_contained(json.loads(proc.stdout), https_upstream, events)
