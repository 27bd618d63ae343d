"""Pulling an OCI image from a registry into a root filesystem (skopeo, then umoci).

TLS verification is turned off only for registries on this machine (127.0.0.1, localhost),
which serve plain HTTP; credentials are a `user:password` string the caller resolved from a
stored secret (this module never sees secret names).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from sandboxes.images.spec import ImageSpec


class OciError(Exception):
    def __init__(self, message: str, *, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


def _tls(spec: ImageSpec, flag: str) -> list[str]:
    return [f"--{flag}=false"] if spec.oci_is_local else []


def _creds(creds: str | None, flag: str) -> list[str]:
    return [f"--{flag}", creds] if creds else []


def oci_digest(spec: ImageSpec, *, creds: str | None = None) -> str:
    """The manifest digest the reference points at now (part of the image key: a moved tag is a
    new image)."""
    argv = ["skopeo", "inspect", *_tls(spec, "tls-verify"), *_creds(creds, "creds"),
            "--format", "{{.Digest}}", f"docker://{spec.oci}"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        message = (out.stderr.strip().splitlines() or ["skopeo inspect failed"])[-1]
        not_found = any(s in message for s in ("manifest unknown", "not found", "404"))
        raise OciError(message, not_found=not_found)
    return out.stdout.strip()


def oci_pull(
    spec: ImageSpec,
    *,
    workdir: Path,
    rootfs: Path,
    run: Callable[[list[str]], int],
    creds: str | None = None,
) -> dict:
    """Copy the image into an OCI layout under `workdir` and unpack it as `rootfs`; return the
    image's runtime config (`env`, `cwd`) from the bundle umoci makes."""
    layout = workdir / "layout"
    bundle = workdir / "bundle"
    copy = ["skopeo", "copy", *_tls(spec, "src-tls-verify"), *_creds(creds, "src-creds"),
            f"docker://{spec.oci}", f"oci:{layout}:image"]  # fmt: skip
    if run(copy) != 0:
        raise OciError(f"could not pull {spec.oci}")
    unpack = ["umoci", "unpack", *([] if os.geteuid() == 0 else ["--rootless"]),
              "--image", f"{layout}:image", str(bundle)]  # fmt: skip
    if run(unpack) != 0:
        raise OciError(f"could not unpack {spec.oci}")
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "rootfs").rename(rootfs)
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.rmtree(layout, ignore_errors=True)
    process = config.get("process") or {}
    return {"env": list(process.get("env") or []), "cwd": process.get("cwd") or "/"}
