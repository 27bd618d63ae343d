"""First build of the example Python image (`apt: [python3-venv], pip: [pytest]`) through
image_ensure, against the baseline of the same by hand in the same run: mmdebstrap, then
`python3 -m venv` and `pip install pytest` under bubblewrap with the host's pip configuration
and the host's network. image_ensure's steps go through the egress proxy (its default), as in
production. Also the cached ensure (the second campaign asking for the image).

    .venv/bin/python benchmarks/image_build.py

Reaches the Debian mirror of the host's apt sources and the host's pip indexes; where those
resolve to non-public addresses, set CONVOY_EGRESS_INDEX_ADDRESSES as the operator would
(otherwise pip's index is refused by the proxy and only local indexes serve). Uses a scratch
PostgreSQL database (BENCH_DATABASE_URL's server) and a temporary data dir, removed at the end.
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch_db import scratch_django, scratch_drop

SPEC = {"apt": ["python3-venv"], "pip": ["pytest"]}
DB = "convoy_bench_images"


def by_hand(suite: str) -> float:
    """What an operator would type, with the same host pip configuration carried in."""
    from sandboxes.images.hostconfig import package_client_config

    work = Path(tempfile.mkdtemp(prefix="convoy-bench-hand-"))
    rootfs = work / "rootfs"
    started = time.monotonic()
    try:
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=apt",
                "--include=python3-venv",
                suite,
                str(rootfs),
            ],
            check=True,
        )
        config = package_client_config()
        binds = [a for host, inside in config.binds for a in ("--ro-bind", host, inside)]
        subprocess.run(
            ["bwrap", "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
             "--tmpfs", "/tmp", "--unshare-all", "--share-net",
             "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf", *binds, "--",
             "/bin/sh", "-c", "python3 -m venv /opt/v && /opt/v/bin/pip install -q pytest"],
            check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp",
                             **config.env},
        )  # fmt: skip
        return time.monotonic() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    scratch_django(DB)
    from django.conf import settings
    from django.core.management import call_command

    from sandboxes.images.services import image_ensure
    from sandboxes.images.spec import image_spec_parse

    call_command("migrate", verbosity=0)
    try:
        hand = by_hand(image_spec_parse(SPEC).base)
        started = time.monotonic()
        image = image_ensure(spec=SPEC, actor=None)
        convoy = time.monotonic() - started
        started = time.monotonic()
        image_ensure(spec=SPEC, actor=None)
        cached = time.monotonic() - started
        from audit.models import AuditEvent

        events = AuditEvent.objects.filter(target_type="sandboxes.image", target_id=str(image.pk))
        allowed = events.filter(action="sandbox.egress.allowed").count()
        refused = events.filter(action="sandbox.egress.refused").count()
        print(f"image size: {image.size_bytes / 2**20:.0f} MB (key {image.key[:12]})")
        print(f"build connections through the egress proxy: {allowed} allowed, {refused} refused")
        print(f"by hand (mmdebstrap + venv + pip install pytest): {hand:6.1f} s")
        print(f"image_ensure, first build (via the proxy):        {convoy:6.1f} s")
        print(f"ratio first build / by hand:                      {convoy / hand:6.2f}x")
        print(f"image_ensure, cached (second campaign):           {cached * 1000:6.1f} ms")
    finally:
        shutil.rmtree(settings.DATA_DIR, ignore_errors=True)
        scratch_drop(DB)


if __name__ == "__main__":
    sys.exit(main())
