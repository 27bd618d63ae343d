"""Campaign images and the tools area for the local engines (bubblewrap, gVisor).

A sandbox made with `SandboxSpec.image_root` sees that read-only root filesystem as `/` instead
of the host's /usr (docs/images.md); its own /workspace, /tmp and /convoy/files are mounted on
top (the image's /etc already has the sandbox user, hosts and git's safe.directory). With
`SandboxSpec.tools_home`, `<workspace>/.convoy-home` is bound at /convoy/home and is $HOME:
being inside the workspace's layer it is carried by snapshots and forks, and the checkout's
`.git/info/exclude` keeps it out of every diff.

The sandbox's commands can replace `.convoy-home` with anything, a symlink to a host directory
included, and a bind follows symlinks on the host. So the tools area is opened without
following any (`tools_home_fd`; bubblewrap binds that descriptor) or checked just before a
gVisor container is made from it (`tools_home_checked`: no process of the sandbox runs then);
what is not a directory is replaced by a fresh, empty one.

bwrap mounts over an image's paths after it has moved the host's root to /oldroot: a link in
the image (`/convoy -> /oldroot/root`) leads there, and bwrap makes the mount points it misses
on the host (as root for a build step, as the sandboxes' host user for a sandbox). So no part
of a mount point's path may be a link (`mountpoint_fault`), checked as an image is built
(`sandboxes.images.build`) and as a sandbox is made on it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from sandboxes.backends.base import FILES_DIR, NetworkPolicy, SandboxError, SandboxSpec
from sandboxes.backends.host_user import Owner
from sandboxes.egress.relay import SANDBOX_RELAY_PATH, SANDBOX_SOCKET_DIR

HOME_DIR = "/convoy/home"
HOME_IN_WORKSPACE = ".convoy-home"  # /workspace/.convoy-home, excluded from the diff
# Mount points every image has, so a backend can bind over them with the rootfs read-only.
MOUNTPOINT_DIRS = ("/workspace", FILES_DIR, HOME_DIR, SANDBOX_SOCKET_DIR, "/convoy/bin",
                   "/proc", "/dev", "/etc", "/tmp")  # noqa: S108  # fmt: skip
MOUNTPOINT_FILES = ("/etc/resolv.conf", SANDBOX_RELAY_PATH)


def mountpoint_fault(
    root: str | Path, inside: str, *, kind: str = "dir", complete: bool = False
) -> str | None:
    """What makes `inside` unsafe to mount over in the image at `root` (a sentence naming the
    first part of the path at fault), or None: a part that is a symbolic link, or not a
    directory; the last part not a regular file when `kind` is "file", not a directory when it
    is "dir" (for "any", only not a link); a missing part when `complete` (bwrap would make
    it). Read without following any link."""
    parts = inside.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        shown = "/" + "/".join(parts[:depth])
        try:
            mode = os.lstat(os.path.join(root, *parts[:depth])).st_mode
        except FileNotFoundError:
            return f"{shown} is missing" if complete else None
        except OSError as exc:
            return f"{shown} cannot be read ({exc.strerror})"
        if stat.S_ISLNK(mode):
            return f"{shown} is a symbolic link"
        last = depth == len(parts)
        if last and kind == "file" and not stat.S_ISREG(mode):
            return f"{shown} is not a regular file"
        if (not last or kind == "dir") and not stat.S_ISDIR(mode):
            return f"{shown} is not a directory"
    return None


def _sandbox_mountpoints(spec: SandboxSpec) -> list[tuple[str, str]]:
    """(path, kind) of what bwrap or runsc mount over in the image for this sandbox."""
    wanted = [("/workspace", "dir"), ("/tmp", "dir"), ("/proc", "dir"), ("/dev", "dir")]  # noqa: S108
    if spec.tools_home:
        wanted.append((HOME_DIR, "dir"))
    if spec.files:
        wanted.append((FILES_DIR, "dir"))
    if spec.egress_socket:
        wanted += [(SANDBOX_SOCKET_DIR, "dir"), (SANDBOX_RELAY_PATH, "file")]
        wanted += [(str(path), "any") for path in spec.egress_files]
    if spec.network == NetworkPolicy.OPEN:
        wanted.append(("/etc/resolv.conf", "file"))
    return wanted


def image_extra(spec: SandboxSpec) -> dict:
    """What a sandbox keeps in its meta for its image and tools area; {} for neither."""
    extra: dict = {}
    if spec.image_root:
        if not (Path(spec.image_root) / "usr").is_dir():
            raise SandboxError(f"image {spec.image_key[:12]}: {spec.image_root} is not a rootfs")
        for inside, kind in _sandbox_mountpoints(spec):
            fault = mountpoint_fault(spec.image_root, inside, kind=kind)
            if fault:
                raise SandboxError(
                    f"image {spec.image_key[:12]}: {fault}; the sandbox mounts {inside} there"
                    " (a mount point's path must be the image's own directories)"
                )
        extra.update(image_root=spec.image_root, image_key=spec.image_key)
    if spec.tools_home:
        extra["tools_home"] = True
    return extra


def image_env(spec: SandboxSpec) -> dict[str, str]:
    """The image's variables and, with the tools area, HOME=/convoy/home."""
    env = dict(spec.image_env) if spec.image_root else {}
    if spec.tools_home:
        env["HOME"] = HOME_DIR
    return env


def tools_home_make(workspace: Path, extra: dict, *, owner: Owner | None = None) -> None:
    """Make the tools area in a new sandbox's workspace (a fork finds it in its layers: a
    command may have left a symlink there, which `mkdir(exist_ok=True)` followed to ask
    whether a host directory exists; it is replaced without being followed)."""
    if extra.get("tools_home"):
        os.close(tools_home_fd(str(workspace), owner=owner))


def bwrap_image_args(extra: dict, *, etc: str) -> list[str] | None:
    """bwrap's root for a sandbox on an image (put first: the image read-only as `/`; its /etc
    already holds the sandbox user, hosts and gitconfig, written by the build); None without
    an image."""
    root = extra.get("image_root")
    if not root:
        return None
    return ["--ro-bind", root, "/"]


def tools_home_fd(workspace: str, *, owner: Owner | None = None) -> int:
    """An `O_PATH` descriptor of the workspace's tools area, opened without following a
    symlink; the caller closes it. Whatever a command left there that is not a directory (a
    symlink, a file) is removed and a fresh, empty directory made (`owner`'s, when given: the
    sandbox's host user, `host_user`)."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    parent = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # Convoy's own path
    try:
        try:
            return os.open(HOME_IN_WORKSPACE, flags, dir_fd=parent)
        except (FileNotFoundError, NotADirectoryError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(HOME_IN_WORKSPACE, dir_fd=parent)  # never follows a symlink
            os.mkdir(HOME_IN_WORKSPACE, 0o755, dir_fd=parent)
            if owner is not None:
                os.chown(HOME_IN_WORKSPACE, *owner, dir_fd=parent, follow_symlinks=False)
            return os.open(HOME_IN_WORKSPACE, flags, dir_fd=parent)
    except OSError as exc:
        raise SandboxError(f"the tools area {HOME_DIR} could not be opened: {exc}") from None
    finally:
        os.close(parent)


def tools_home_checked(extra: dict, workspace: str) -> list[tuple[str, str]]:
    """(host path, sandbox path) of the tools area, [] without one, for an engine that binds it
    by path when no process of the sandbox runs: the path is a directory (made again if a
    command left anything else there) until the sandbox's next command."""
    if not extra.get("tools_home"):
        return []
    os.close(tools_home_fd(workspace))
    return [(os.path.join(workspace, HOME_IN_WORKSPACE), HOME_DIR)]


def gvisor_root(extra: dict, skeleton: Path) -> dict:
    """The bundle's `root`: the image (read-only, shared by every sandbox on it; writes go to
    /workspace, /tmp and /convoy/home), else the installation's empty skeleton."""
    return {"path": extra.get("image_root") or str(skeleton), "readonly": True}


def gvisor_system_mounts(extra: dict, *, etc: str, workspace: str) -> list[dict]:
    """The bundle's system mounts: the host's /usr and the installation's /etc (none on an
    image: it has its own); then the tools area (called as the container is made, when no
    process of the sandbox runs: a container's mounts are fixed at its start)."""
    root = extra.get("image_root")
    home = [
        {"destination": inside, "type": "bind", "source": host, "options": ["rbind", "rw"]}
        for host, inside in tools_home_checked(extra, workspace)
    ]
    if not root:
        return [
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
            {"destination": "/etc", "type": "bind", "source": etc, "options": ["rbind", "ro"]},
            *home,
        ]
    return home
