"""Pulling an OCI image from a registry into a root filesystem (skopeo, then umoci).

TLS verification is turned off only for registries on this machine (127.0.0.1, localhost),
which serve plain HTTP; of those, only the ones `CONVOY_LOCAL_REGISTRIES` lists are used.
Credentials are a `user:password` string the caller resolved from a stored secret (this
module never sees secret names).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sandboxes.images.spec import ImageSpec
from sandboxes.repos import RepoUrlError, host_addresses_vet


class OciError(Exception):
    def __init__(self, message: str, *, not_found: bool = False, refused: bool = False):
        super().__init__(message)
        self.not_found = not_found
        self.refused = refused  # a registry Convoy does not connect to: the spec's problem


def _tls(spec: ImageSpec, flag: str) -> list[str]:
    return [f"--{flag}=false"] if spec.oci_is_local else []


@contextlib.contextmanager
def _creds(spec: ImageSpec, creds: str | None, flag: str) -> Iterator[list[str]]:
    """`--<flag> FILE`: the login in a private auth file for the time of one skopeo call, not
    on its command line, which the build log shows (and every host user may read)."""
    if not creds:
        yield []
        return
    with tempfile.TemporaryDirectory(prefix="convoy-auth-") as home:  # mode 0700
        path = Path(home) / "auth.json"
        token = base64.b64encode(creds.encode()).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"auths": {spec.oci_registry: {"auth": token}}}, file)
        yield [f"--{flag}", str(path)]


def _registry_vet(spec: ImageSpec) -> None:
    """The registry must be this machine's own (a local registry, plain HTTP) or a host whose
    addresses Convoy may connect to, as a repository's: a manager's `image.oci` made the host
    send requests to any address of the private network and showed the answer's text."""
    refusal = spec.oci_local_refusal()
    if refusal:  # a spec saved before the registry left CONVOY_LOCAL_REGISTRIES
        raise OciError(refusal, refused=True)
    if spec.oci_is_local:
        return
    try:
        host_addresses_vet(spec.oci_registry.rsplit(":", 1)[0], strict=True)
    except RepoUrlError as exc:
        raise OciError(f"the registry {spec.oci_registry}: {exc.message}", refused=True) from None


def oci_digest(spec: ImageSpec, *, creds: str | None = None) -> str:
    """The manifest digest the reference points at now (part of the image key: a moved tag is a
    new image)."""
    _registry_vet(spec)
    with _creds(spec, creds, "authfile") as login:
        argv = ["skopeo", "inspect", *_tls(spec, "tls-verify"), *login,
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
    _registry_vet(spec)
    layout = workdir / "layout"
    bundle = workdir / "bundle"
    with _creds(spec, creds, "src-authfile") as login:
        copy = ["skopeo", "copy", *_tls(spec, "src-tls-verify"), *login,
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
