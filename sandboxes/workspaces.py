"""Workspaces of the local engines: one directory per sandbox, frozen layers, overlay forks.

Layout under `<data dir>/sandboxes/`:
    <external id>/meta.json      labels, limits, deadline, the layers below and cgroups
    <external id>/workspace      what the sandbox sees at /workspace (a plain directory, or an
                                 overlay mount of `upper` over the frozen layers)
    <external id>/upper, work    the overlay's writable layer and its scratch directory
    layers/<snapshot id>/        a frozen, read-only layer made by a snapshot
    etc/                         the minimal /etc every sandbox gets
A snapshot moves the sandbox's writable layer aside (a rename: no copy) and remounts the
sandbox on top of it; a fork is a new overlay over the same layers. Where overlay mounts are
refused, snapshots and forks fall back to copying.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sandboxes.backends.base import SandboxError
from sandboxes.backends.host_user import Owner, private_to
from sandboxes.fsplace import subdirs_spread_made
from sandboxes.trash import trash_put, trash_sweep, tree_remove

WORKSPACE = PurePosixPath("/workspace")
# Host directories a local sandbox sees read-only (Debian merges /bin, /lib… into /usr).
SYSTEM_SYMLINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
ETC_FROM_HOST = ("alternatives", "ssl", "ca-certificates", "ld.so.cache", "ld.so.conf",
                 "ld.so.conf.d", "localtime", "mime.types", "protocols", "services")  # fmt: skip


@dataclass
class Meta:
    external_id: str
    backend: str
    labels: dict[str, str] = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    network: str = "none"
    created_at: float = 0.0
    deadline_at: float = 0.0
    layers: list[str] = field(default_factory=list)  # frozen layers, top first
    copied: bool = False  # True when the workspace is a plain copy (overlay refused)
    cgroups: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # backend-specific


def meta_owner(meta: Meta) -> Owner | None:
    """The host user the sandbox's commands run as, where that is not the worker's own
    (`host_user`): it owns the workspace (and overlay upper layer), and its group alone may
    pass through, not list, the sandbox's directory. None: the worker's, as made."""
    uid = meta.extra.get("host_uid")
    return None if uid is None else (uid, uid)


def _meta_copy(meta: Meta) -> Meta:
    """A copy the caller may change (its dicts and lists too) without changing the cache."""
    return Meta(
        **{k: v.copy() if isinstance(v, (dict, list)) else v for k, v in vars(meta).items()}
    )


class Workspaces:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.layers_dir = root / "layers"
        # "etc2": the first version ("etc") copied root-only files too (/etc/ssl/private).
        self.etc_dir = root / "etc2"
        self._overlay_ok: bool | None = None
        self._spares: list[Path] = []  # made by this process, claimed by its next creates
        self._etc_ready = False
        # meta.json as last read or written here, by sandbox, with the (inode, size, mtime) it
        # had: a read that finds the file unchanged skips the parse. Every write renames a new
        # file over it, so a write by another process always changes the inode.
        self._metas: dict[str, tuple[tuple[int, int, int], Meta]] = {}

    # --- sandboxes ------------------------------------------------------------------------
    def root_make(self) -> None:
        """The root, with each sandbox's directory placed apart (`fsplace.subdirs_spread`)."""
        subdirs_spread_made(self.root)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{secrets.token_hex(6)}"

    def dir(self, external_id: str) -> Path:
        if not external_id or "/" in external_id or external_id.startswith("."):
            raise SandboxError(f"bad sandbox id {external_id!r}")
        return self.root / external_id

    def workspace(self, external_id: str) -> Path:
        return self.dir(external_id) / "workspace"

    def create(self, meta: Meta) -> Path:
        """Make the sandbox's directory; its workspace is empty or an overlay of meta.layers.

        The caller writes meta.json once the engine is up (until then `ids()` lists the
        directory but `list()` does not); a sandbox over layers has it written once before
        its overlay is mounted as well.
        """
        base = self.dir(meta.external_id)
        if not self._spare_claim(base):
            self.root_make()
            base.mkdir(mode=0o700)
            (base / "workspace").mkdir()
        workspace = base / "workspace"
        if (owner := meta_owner(meta)) is not None:
            self.owner_give(base, owner)
        if meta.layers:
            # Labelled before the mount: a worker killed right after it leaves a sandbox the
            # orphan sweeps can find by its labels (and unmount), not a bare directory.
            self.meta_write(meta)
            self._layer_on(meta, base)
        return workspace

    def owner_give(self, base: Path, owner: Owner) -> None:
        """The sandbox's directory passable by `owner`'s group alone; what its commands write
        (the workspace, or the overlay's upper layer that is its root) `owner`'s."""
        private_to(base, owner[1])
        os.chown(base / "workspace", *owner)
        with contextlib.suppress(FileNotFoundError):
            os.chown(base / "upper", *owner)

    def _layer_on(self, meta: Meta, base: Path) -> None:
        """Give `base/workspace` the frozen layers: an overlay, or a copy where refused."""
        (base / "upper").mkdir(exist_ok=True)
        (base / "work").mkdir(exist_ok=True)
        owner = meta_owner(meta)
        if self.overlay_available():
            if owner is not None:  # the overlay's root is its upper layer's
                os.chown(base / "upper", *owner)
            self._mount(meta, base)
            meta.copied = False
        else:
            _copy_tree(self.layers_dir / meta.layers[0], base / "workspace")
            if owner is not None:
                os.chown(base / "workspace", *owner)
            meta.copied = True

    def _mount(self, meta: Meta, base: Path) -> None:
        lowers = ":".join(str(self.layers_dir / name) for name in meta.layers)
        opts = f"lowerdir={lowers},upperdir={base / 'upper'},workdir={base / 'work'}"
        run = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(base / "workspace")],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise SandboxError(f"overlay mount failed: {run.stderr.strip()}", transient=True)

    def meta_read(self, external_id: str) -> Meta:
        path = f"{self.dir(external_id)}/meta.json"
        try:
            st = os.stat(path)
            cached = self._metas.get(external_id)
            if cached is not None and cached[0] == (st.st_ino, st.st_size, st.st_mtime_ns):
                return _meta_copy(cached[1])
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                meta = Meta(**json.loads(f.read()))
        except FileNotFoundError:
            self._metas.pop(external_id, None)
            raise SandboxError(f"no sandbox {external_id}") from None
        self._remember(meta, st)
        return _meta_copy(meta)

    def _remember(self, meta: Meta, st: os.stat_result) -> None:
        if len(self._metas) >= 256:  # sandboxes another process removed, never read again here
            self._metas.clear()
        self._metas[meta.external_id] = ((st.st_ino, st.st_size, st.st_mtime_ns), meta)

    def meta_write(self, meta: Meta) -> None:
        base = self.dir(meta.external_id)
        data = json.dumps(vars(meta)).encode()  # its fields are plain JSON values already
        # Written whole, then renamed over: readers in other processes never see half of it.
        # (A claimed spare has meta.tmp already: no new file to make.)
        # Not O_TRUNC: ext4 flushes a file truncated to zero when it is closed (auto_da_alloc),
        # a third of this write's cost; cutting off what is left of a longer old file is not.
        fd = os.open(f"{base}/meta.tmp", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            size = len(data)
            while data:
                data = data[os.write(fd, data) :]
            os.ftruncate(fd, size)
            st = os.fstat(fd)  # a rename keeps inode, size and mtime
        finally:
            os.close(fd)
        os.replace(f"{base}/meta.tmp", f"{base}/meta.json")
        self._remember(_meta_copy(meta), st)

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.name not in ("layers", "etc", "etc2", "rootfs", "runsc", "checkpoints")
            and not p.name.startswith(".")
            and p.is_dir()
        )

    def remove(self, external_id: str) -> None:
        base = self.dir(external_id)
        self._metas.pop(external_id, None)
        self.unmount(base / "workspace")
        trash_put(base, root=self.root)  # its files go at the lowest priority (sandboxes.trash)
        self._spare_make()

    # --- spares: a new sandbox's directory, made while nothing waits for it ---------------
    # Making files is the slow part of a new sandbox on some disks (new inodes: up to ~1 ms
    # each, against ~0.02 ms for a rename), so a removal leaves the next sandbox an empty
    # directory, workspace and meta.tmp, and a create renames it into place.
    SPARES = 2

    def _spare_make(self) -> None:
        if len(self._spares) >= self.SPARES:
            return
        spare = self.root / f".spare-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            spare.mkdir(mode=0o700)
            (spare / "workspace").mkdir()
            (spare / "meta.tmp").touch()
        except OSError:
            tree_remove(spare)
            return
        self._spares.append(spare)

    def _spare_claim(self, base: Path) -> bool:
        while True:
            try:
                spare = self._spares.pop()
            except IndexError:
                return False
            try:
                os.rename(spare, base)
            except OSError:  # the reaper removed it, or another process took it
                continue
            os.utime(base)  # its age is the sandbox's (the reaper goes by it), not the spare's
            return True

    def spares_stale(self, *, older_than_s: float) -> list[Path]:
        """Spares no live process will claim (their maker is gone), for the reaper."""
        found = []
        for path in self.root.glob(".spare-*") if self.root.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                maker_gone = not Path(f"/proc/{int(path.name.split('-')[1])}").exists()
                old = time.time() - path.stat().st_mtime > older_than_s
                if maker_gone and old and path not in self._spares:
                    found.append(path)
        return found

    def spare_remove(self, path: Path) -> None:
        tree_remove(path)

    def trash_sweep(self, *, older_than_s: float) -> list[str]:
        """Entries a dead worker's remover left in the trash (`sandboxes.trash`), removed."""
        return trash_sweep(self.root, older_than_s=older_than_s)

    @staticmethod
    def unmount(path: Path) -> None:
        if os.path.ismount(path):
            run = subprocess.run(["umount", str(path)], capture_output=True)
            if run.returncode != 0:  # still busy: detach it now, the kernel frees it later
                subprocess.run(["umount", "-l", str(path)], capture_output=True)

    # --- snapshots ------------------------------------------------------------------------
    def snapshot(self, meta: Meta) -> str:
        """Freeze the sandbox's current files as a new layer; the sandbox goes on above it."""
        base = self.dir(meta.external_id)
        layer = f"snap-{secrets.token_hex(6)}"
        # The worker's alone: overlays are mounted by the worker, and no sandbox looks a layer
        # up itself (a run's snapshot is its own user's files).
        self.layers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.layers_dir / layer
        if not self.overlay_available():
            _copy_tree(base / "workspace", target)
            meta.layers = [layer]
        else:
            if meta.layers and not meta.copied:
                self.unmount(base / "workspace")
                os.rename(base / "upper", target)
                tree_remove(base / "work")
                meta.layers = [layer, *meta.layers]
            else:
                os.rename(base / "workspace", target)
                (base / "workspace").mkdir()
                meta.layers = [layer]
            self._layer_on(meta, base)
        _freeze(target)
        (target.parent / f"{layer}.layers").write_text(json.dumps(meta.layers))
        self.meta_write(meta)
        return layer

    def layer_uid(self, layer: str) -> int | None:
        """Whose files the layer holds at its top (its sandbox's host user); None if gone."""
        try:
            return os.stat(self.layers_dir / layer).st_uid
        except FileNotFoundError:
            return None

    def snapshot_layers(self, layer: str) -> list[str]:
        try:
            return json.loads((self.layers_dir / f"{layer}.layers").read_text())
        except FileNotFoundError:
            raise SandboxError(f"no snapshot {layer}") from None

    def snapshot_remove(self, layer: str) -> None:
        tree_remove(self.layers_dir / layer)
        with contextlib.suppress(FileNotFoundError):
            (self.layers_dir / f"{layer}.layers").unlink()

    def layers_in_use(self, *, besides: str = "") -> set[str]:
        """Layers that a sandbox mounts or another snapshot stacks on."""
        used: set[str] = set()
        for ext in self.ids():
            with contextlib.suppress(SandboxError, ValueError, TypeError):
                used.update(self.meta_read(ext).layers)
        for path in self.layers_dir.glob("*.layers") if self.layers_dir.is_dir() else []:
            if path.stem != besides:
                with contextlib.suppress(OSError, ValueError):
                    used.update(json.loads(path.read_text()))
        return used

    def overlay_available(self) -> bool:
        """Can this host mount overlays here? Probed once per data dir, then remembered."""
        if self._overlay_ok is None:
            remembered = self.root / ".overlay"
            with contextlib.suppress(OSError):
                self._overlay_ok = remembered.read_text() == "yes"
        if self._overlay_ok is None:
            self.root_make()
            probe = self.root / f".probe-{os.getpid()}"
            try:
                for d in ("lower", "upper", "work", "merged"):
                    (probe / d).mkdir(parents=True, exist_ok=True)
                opts = ",".join(
                    f"{opt}dir={probe / d}"
                    for opt, d in (("lower", "lower"), ("upper", "upper"), ("work", "work"))
                )
                run = subprocess.run(
                    ["mount", "-t", "overlay", "overlay", "-o", opts, str(probe / "merged")],
                    capture_output=True,
                )
                self._overlay_ok = run.returncode == 0
                self.unmount(probe / "merged")
            except OSError:
                self._overlay_ok = False
            finally:
                tree_remove(probe)
            (self.root / ".overlay").write_text("yes" if self._overlay_ok else "no")
        return self._overlay_ok

    # --- /etc for every sandbox -----------------------------------------------------------
    def etc(self) -> Path:
        """A minimal /etc: no host users, no host secrets, only what programs need to run."""
        if self._etc_ready:
            return self.etc_dir
        marker = self.etc_dir / ".ready"
        if marker.exists():
            self._etc_ready = True
            return self.etc_dir
        # One process builds it (about 900 files and links) while the others wait: every pool
        # process of a new worker gets here with its first sandbox.
        self.root_make()
        with open(self.root / ".etc.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not marker.exists():
                self._etc_build(marker)
        self._etc_ready = True
        return self.etc_dir

    def _etc_build(self, marker: Path) -> None:
        tmp = self.root / f".etc-{secrets.token_hex(4)}"
        tmp.mkdir(parents=True)
        (tmp / "passwd").write_text(
            "root:x:0:0:root:/workspace:/bin/sh\n"
            "sandbox:x:1000:1000:sandbox:/workspace:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (tmp / "group").write_text("root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n")
        (tmp / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost\n")
        (tmp / "hostname").write_text("sandbox\n")
        (tmp / "resolv.conf").write_text("")
        (tmp / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
        (tmp / "gitconfig").write_text("[safe]\n\tdirectory = *\n[init]\n\tdefaultBranch = main\n")
        for name in ETC_FROM_HOST:
            src = Path("/etc") / name
            if src.is_dir() and _world_readable(src):
                shutil.copytree(src, tmp / name, symlinks=True, ignore=_private_names)
            elif src.exists() and _world_readable(src.resolve()):
                shutil.copy2(src, tmp / name, follow_symlinks=True)
        try:
            tmp.rename(self.etc_dir)
        except OSError as exc:  # left by a process killed before its marker
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            tree_remove(tmp)
        marker.touch()
        if (self.root / "etc").is_dir():  # the first version's, with root-only files
            trash_put(self.root / "etc", root=self.root)


def _world_readable(path: Path) -> bool:
    """Whether any user of the host may read `path` (a directory: also enter it). A file only
    root may read (a TLS private key under /etc/ssl/private) has no place in a sandbox, whose
    user is root outside its namespace and so could read it there."""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return True  # copied as a link: it resolves inside the sandbox's own /etc
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & need == need


def _private_names(directory: str, names: list[str]) -> set[str]:
    """copytree's `ignore`: the entries of `directory` not every user may read."""
    return {name for name in names if not _world_readable(Path(directory) / name)}


# --- files inside a workspace, refusing `..` and symlinks that leave it ----------------------
def workspace_relpath(path: str, workdir: str = str(WORKSPACE)) -> list[str]:
    """The components of `path` below /workspace; SandboxError if it points anywhere else."""
    p = PurePosixPath(path)
    if not p.is_absolute():
        p = PurePosixPath(workdir) / p
    try:
        rel = p.relative_to(WORKSPACE)
    except ValueError:
        raise SandboxError(f"{path!r} is outside /workspace") from None
    parts = list(rel.parts)
    if not parts or any(part in ("..", ".", "") for part in parts):
        raise SandboxError(f"{path!r} must name a file inside /workspace without '..'")
    return parts


def _open_parent(root: Path, parts: list[str], *, create: bool, owner: Owner | None = None) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                if owner is not None:
                    os.fchown(nxt, *owner)
            os.close(fd)
            fd = nxt
        return fd
    except OSError:
        os.close(fd)
        raise


def workspace_write(
    root: Path, path: str, data: bytes, mode: int = 0o644, *, owner: Owner | None = None
) -> None:
    """`owner`: whom a file or directory made here belongs to (the sandbox's host user, so
    its commands may change what the host wrote); None: the worker."""
    parts = workspace_relpath(path)
    try:
        parent = _open_parent(root, parts, create=True, owner=owner)
        try:
            # Not blocking: opening a FIFO a command left there would wait for a reader forever.
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, mode, dir_fd=parent)
        finally:
            os.close(parent)
        with os.fdopen(fd, "wb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SandboxError(f"{path} is not a regular file")
            f.truncate(0)
            f.write(data)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)
    except OSError as exc:
        raise SandboxError(f"cannot write {path}: {_why(exc)}") from None


def workspace_read(root: Path, path: str) -> bytes:
    parts = workspace_relpath(path)
    try:
        parent = _open_parent(root, parts, create=False)
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO: no wait
            fd = os.open(parts[-1], flags, dir_fd=parent)
        finally:
            os.close(parent)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SandboxError(f"{path} is not a regular file")
            return f.read()
    except OSError as exc:
        raise SandboxError(f"cannot read {path}: {_why(exc)}") from None


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link is in the way (links are not followed)"
    if exc.errno == errno.ENOTDIR:
        return "a path component is not a directory (or is a link)"
    return exc.strerror or str(exc)


def _freeze(path: Path) -> None:
    """Snapshots are read-only to everyone but root (forks only ever read them via overlay)."""
    os.chmod(path, os.stat(path).st_mode & ~0o222 | 0o500)


def _copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["cp", "-a", f"{src}/.", str(dst)], capture_output=True, text=True)
    if run.returncode != 0:
        raise SandboxError(f"copying the workspace failed: {run.stderr.strip()}")
