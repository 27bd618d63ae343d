"""The in-sandbox relay binary: built from relay.c with the host's C compiler, cached by hash.

Static when the host's libc allows it, so the same file runs inside any root filesystem
(a foreign image's libc may differ from the host's); dynamic otherwise, which only works
when the sandbox sees the host's /usr. Built under a temporary name and renamed into place,
under a lock, so concurrent workers never see (or run) half a binary.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings

from core.errors import Unavailable

SOURCE = Path(__file__).with_name("relay.c")
# Where backends mount the relay and the proxy's socket directory inside a sandbox.
SANDBOX_RELAY_PATH = "/convoy/bin/relay"
SANDBOX_SOCKET_DIR = "/convoy/egress"
SANDBOX_PROXY_PORT = 3128


def relay_binary(*, data_dir: Path | None = None, compiler: str | None = None) -> Path:
    """The relay for this source, building it on first use. Raises Unavailable without cc."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    out_dir = Path(data_dir or settings.DATA_DIR) / "egress" / "bin"
    target = out_dir / f"relay-{digest}"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    cc = compiler or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise Unavailable("no C compiler on this host to build the egress relay (install gcc)")
    with open(out_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # another process built it while we waited
            return target
        fd, tmp = tempfile.mkstemp(prefix=".relay-", dir=out_dir)
        os.close(fd)
        try:
            errors = []
            for extra in (["-static"], []):
                proc = subprocess.run(
                    [cc, "-O2", *extra, "-o", tmp, str(SOURCE)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if proc.returncode == 0:
                    break
                errors.append(proc.stderr.strip()[-500:])
            else:
                raise Unavailable("could not build the egress relay: " + " | ".join(errors))
            os.chmod(tmp, 0o755)  # noqa: S103 - run by the sandbox user, who may differ
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def relay_is_static(path: Path) -> bool:
    """True when the binary needs no dynamic loader (it then runs in any root filesystem)."""
    with open(path, "rb") as f:
        return not _has_interp(f)


def _has_interp(f) -> bool:
    # ELF64 little-endian: program headers at e_phoff, PT_INTERP (3) means dynamic.
    f.seek(0)
    head = f.read(64)
    if head[:4] != b"\x7fELF" or head[4] != 2:
        return True
    phoff = int.from_bytes(head[32:40], "little")
    phentsize = int.from_bytes(head[54:56], "little")
    phnum = int.from_bytes(head[56:58], "little")
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    return any(
        int.from_bytes(table[i * phentsize : i * phentsize + 4], "little") == 3
        for i in range(phnum)
    )


def relay_argv(port: int = SANDBOX_PROXY_PORT) -> list[str]:
    """The command a backend starts inside the sandbox (before the user's command)."""
    return [SANDBOX_RELAY_PATH, f"{SANDBOX_SOCKET_DIR}/proxy.sock", str(port)]
