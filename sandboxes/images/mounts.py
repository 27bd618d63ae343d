"""How a backend runs a sandbox on an image: the read-only root, the mounts on top, the env.

Backends call these with a ready `Image` (from `image_ensure`); docs/images.md has the full
bubblewrap argv and the gVisor bundle fields. A sandbox without an image keeps the host `/usr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import Conflict
from sandboxes.images.build import image_dir, manifest_read
from sandboxes.models import Image, ImageState

# Writable areas every sandbox gets on top of the image (made by the backend, not the image).
WORKSPACE = "/workspace"
FILES = "/convoy/files"
HOME = "/convoy/home"  # $HOME and the tools area: in snapshots and forks, never in the diff


@dataclass(frozen=True)
class ImageMount:
    source: Path  # on the host
    target: str  # inside the sandbox
    readonly: bool


def image_rootfs(image: Image) -> Path:
    """The image's root filesystem; Conflict when it is not ready (or its files are gone)."""
    if image.state != ImageState.READY or manifest_read(image.key) is None:
        raise Conflict(f"image {image.key[:12]} is not ready ({image.state})")
    return image_dir(image.key) / "rootfs"


def image_mounts(image: Image) -> list[ImageMount]:
    """The image's mounts, outermost first: today just its rootfs read-only as `/`."""
    return [ImageMount(source=image_rootfs(image), target="/", readonly=True)]


def image_env(image: Image) -> dict[str, str]:
    """Variables of a sandbox on this image: the OCI image's and the spec's `env`, and PATH with
    /opt/convoy-venv/bin and /opt/convoy-npm/bin first. The backend adds HOME=/convoy/home."""
    manifest = manifest_read(image.key) or {}
    return dict(manifest.get("env") or {})


def bwrap_root_args(image: Image) -> list[str]:
    """bubblewrap arguments replacing the host-/usr root: put them first, then the backend's
    --proc/--dev/--tmpfs /tmp and binds of /workspace, /convoy/files and /convoy/home."""
    args: list[str] = []
    for mount in image_mounts(image):
        args += ["--ro-bind" if mount.readonly else "--bind", str(mount.source), mount.target]
    return args


def oci_bundle_root(image: Image) -> dict:
    """The `root` of a gVisor OCI bundle's config.json (overlay it per sandbox: runsc
    --overlay2=root:memory, or a host overlayfs, so the image itself is never written)."""
    return {"path": str(image_rootfs(image)), "readonly": True}
