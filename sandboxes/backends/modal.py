"""The Modal backend: sandboxes in Modal's cloud through the `modal` SDK (synchronous API).

Creates are paced by a token bucket shared by every worker (Modal rate-limits creation). A
filesystem snapshot is a Modal image kept without expiry; a fork is N creates from it. A
campaign image (`SandboxSpec.image_spec`) becomes a `modal.Image` chain that Modal builds in
its cloud and caches by layer (sandboxes/images/modal_image.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import posixpath
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from django.conf import settings

from core.errors import Invalid
from sandboxes.backends.base import (
    FILES_DIR,
    Capability,
    ExecEvent,
    ExecOutput,
    ExecResult,
    NetworkPolicy,
    SandboxBackend,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SnapshotHandle,
)
from sandboxes.backends.images import HOME_DIR
from sandboxes.images.modal_image import modal_image_from_spec
from sandboxes.images.spec import image_spec_parse
from sandboxes.pacing import TokenBucket, bucket_get

logger = logging.getLogger(__name__)

WORKSPACE = "/workspace"
MAX_TIMEOUT_S = 24 * 3600  # Modal's longest sandbox life
SNAPSHOT_TIMEOUT_S = 600  # the SDK's default (55 s) fails on large filesystems
FORK_CONCURRENCY = 4
TIMEOUT_EXIT = 124  # what `timeout(1)` returns; every backend reports a timeout with it
KILLED_EXIT = 128 + 9
KILL_GRACE_S = 5.0
# Every command starts through `sh` so that it can be killed when it floods its output cap:
# the wrapper notes its pid (the command's, after `exec`) under the exec's id ($0).
EXEC_WRAPPER = (
    '{ mkdir -p /tmp/.convoy-exec && echo $$ > /tmp/.convoy-exec/"$0"; } 2>/dev/null; exec "$@"'
)
EXEC_KILL = (
    'p=$(cat /tmp/.convoy-exec/"$0" 2>/dev/null) || exit 0; rm -f /tmp/.convoy-exec/"$0"; '
    'kill -9 -- -"$p" 2>/dev/null || kill -9 "$p"'
)
FILES_CLEAR = 'chmod -R u+w "$0" 2>/dev/null; rm -rf "$0"'
FILES_SEAL = 'chmod 0444 -- "$@" && chmod 0555 "$0"'
TRUNCATION_MARKER = "\n[convoy: output truncated after {cap} bytes; command stopped]\n"


# Every cloud sandbox carries its creation time (Unix seconds) in this label, so that the
# reaper spares one created moments ago whose record is still being written.
CREATED_LABEL = "convoy_created"


def truncation_marker(cap: int) -> bytes:
    return TRUNCATION_MARKER.format(cap=cap).encode()


def labels_stamped(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a cloud sandbox is created with: the spec's, and its creation time."""
    return {**labels, CREATED_LABEL: str(int(time.time()))}


class ModalBackend(SandboxBackend):
    name = "modal"
    capabilities = (
        Capability.STREAMED_EXEC
        | Capability.SNAPSHOT
        | Capability.GPU
        | Capability.NETWORK_ALLOWLIST
        | Capability.IMAGE_SPEC
    )
    isolation = "Modal cloud sandbox (gVisor); the spec's registry image or campaign image"
    credentials = ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")  # or Modal's own config file

    @classmethod
    def configured(cls) -> bool:
        """Both tokens in the settings or environment, or a Modal config file (which the SDK
        reads itself)."""
        named = [getattr(settings, n, "") or os.environ.get(n, "") for n in cls.credentials]
        if all(named):
            return True
        config = os.environ.get("MODAL_CONFIG_PATH") or os.path.expanduser("~/.modal.toml")
        return os.path.isfile(config)

    def __init__(
        self,
        *,
        sdk=None,
        app_name: str | None = None,
        create_bucket: TokenBucket | None = None,
        fork_concurrency: int = FORK_CONCURRENCY,
    ) -> None:
        # `sdk` is the `modal` module; tests pass a fake with the same surface.
        self._sdk = sdk
        self._app_name = app_name or settings.MODAL_APP
        self._create_bucket = create_bucket
        self._fork_concurrency = fork_concurrency
        self._app = None
        self._sandboxes: dict[str, object] = {}
        self._images: dict[str, object] = {}
        # Campaign images by key (and credentials): one `modal.Image` chain per spec, not one
        # per run; Modal builds each layer once and caches it in its cloud.
        self._spec_images: dict[tuple[str, str], object] = {}
        self._spec_images_lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------
    @property
    def sdk(self):
        if self._sdk is None:
            import modal  # imported on first use: it is heavy and only Modal users need it

            self._sdk = modal
        return self._sdk

    @contextmanager
    def _errors(self, action: str):
        """Turn Modal's exceptions into SandboxError, transient when retrying may help."""
        exc_mod = self.sdk.exception
        transient = (
            exc_mod.ResourceExhaustedError,  # rate limits and quotas
            exc_mod.ServiceError,  # unavailable, deadline exceeded, cancelled
            exc_mod.InternalError,
            exc_mod.ConnectionError,
            exc_mod.SnapshotCreationError,  # snapshots right after start can fail
            ConnectionError,
            TimeoutError,
        )
        try:
            yield
        except SandboxError:
            raise
        except exc_mod.AuthError as exc:
            raise SandboxError(
                f"Modal {action} refused: check MODAL_TOKEN_ID/MODAL_TOKEN_SECRET ({exc})"
            ) from exc
        except transient as exc:
            raise SandboxError(f"Modal {action} failed: {exc}", transient=True) from exc
        except exc_mod.NotFoundError as exc:
            raise SandboxError(f"Modal {action}: not found ({exc})") from exc
        except exc_mod.Error as exc:
            raise SandboxError(f"Modal {action} failed: {exc}") from exc

    def _app_get(self):
        if self._app is None:
            with self._errors("app lookup"):
                self._app = self.sdk.App.lookup(self._app_name, create_if_missing=True)
        return self._app

    def _bucket(self) -> TokenBucket:
        if self._create_bucket is None:
            self._create_bucket = bucket_get(
                name="modal-create", rate=settings.MODAL_CREATES_PER_SECOND
            )
        return self._create_bucket

    def _sandbox(self, handle: SandboxHandle):
        sb = self._sandboxes.get(handle.external_id)
        if sb is None:
            with self._errors("attach"):
                sb = self.sdk.Sandbox.from_id(handle.external_id)
            self._sandboxes[handle.external_id] = sb
        return sb

    @staticmethod
    def _path(path: str) -> str:
        """Relative paths are inside the workspace, as on the local backends."""
        return posixpath.normpath(posixpath.join(WORKSPACE, path))

    # --- lifecycle --------------------------------------------------------------------------------
    def create(self, spec: SandboxSpec) -> SandboxHandle:
        if spec.image_spec is not None:
            image = self._spec_image(spec)
        else:
            image = self.sdk.Image.from_registry(spec.image)
        return self._create(spec, image)

    def _spec_image(self, spec: SandboxSpec):
        """The campaign image's `modal.Image` (built by Modal at the first create that uses it).
        An OCI image behind a login pulls with a `modal.Secret` of REGISTRY_USERNAME and
        REGISTRY_PASSWORD, Modal's names for registry credentials."""
        creds = spec.image_credentials or ""
        cache_key = (spec.image_key, hashlib.sha256(creds.encode()).hexdigest())
        with self._spec_images_lock:
            image = self._spec_images.get(cache_key)
            if image is not None:
                return image
            try:
                image_spec = image_spec_parse(dict(spec.image_spec or {}))
            except Invalid as exc:  # the campaign spec was checked: a stale or altered spec
                raise SandboxError(f"{exc.field or 'image'}: {exc.message}") from exc
            with self._errors("image"):
                secret = None
                if creds:
                    user, _, password = creds.partition(":")
                    secret = self.sdk.Secret.from_dict(
                        {"REGISTRY_USERNAME": user, "REGISTRY_PASSWORD": password}
                    )
                image = modal_image_from_spec(image_spec, image_api=self.sdk.Image, secret=secret)
            self._spec_images[cache_key] = image
            return image

    def _create_kwargs(self, spec: SandboxSpec, image) -> dict:
        kwargs = {
            "app": self._app_get(),
            "image": image,
            "timeout": min(int(spec.timeout_s), MAX_TIMEOUT_S),
            "idle_timeout": spec.idle_timeout_s,
            "cpu": spec.cpu,
            "memory": spec.memory_mb,
            "gpu": spec.gpu,
            "workdir": spec.workdir,
            "env": {**spec.env, **({"CONVOY_FILES": FILES_DIR} if spec.files else {})} or None,
            "tags": labels_stamped(spec.labels),
        }
        if spec.network == NetworkPolicy.NONE or (
            spec.network == NetworkPolicy.ALLOWLIST and not spec.allowed_domains
        ):
            kwargs["block_network"] = True
        elif spec.network == NetworkPolicy.ALLOWLIST:
            # Modal's allowlist has names, no ports: `git.example.com:22` opens the name.
            names = (d.rsplit(":", 1)[0] for d in spec.allowed_domains)
            kwargs["outbound_domain_allowlist"] = list(dict.fromkeys(names))
        return kwargs

    def _create(self, spec: SandboxSpec, image, *, from_snapshot: bool = False) -> SandboxHandle:
        kwargs = self._create_kwargs(spec, image)
        self._bucket().acquire()
        with self._errors("create"):
            sb = self.sdk.Sandbox.create(**kwargs)
        self._sandboxes[sb.object_id] = sb
        handle = SandboxHandle(
            backend=self.name, external_id=sb.object_id, labels=dict(spec.labels)
        )
        try:
            if spec.files:
                self._files_put(sb, spec.files, from_snapshot=from_snapshot)
            if spec.tools_home and not from_snapshot:  # a snapshot carries its tools area
                with self._errors(f"make {HOME_DIR}"):
                    sb.filesystem.make_directory(HOME_DIR)
        except BaseException:
            with contextlib.suppress(SandboxError):  # else the reaper finds it by label
                self.terminate(handle)
            raise
        return handle

    def _files_put(self, sb, files: Mapping[str, bytes], *, from_snapshot: bool) -> None:
        """The spec's files at /convoy/files, made read-only by their mode.

        Best effort: Modal offers no read-only mount for them here, and commands run as the
        image's user (root by default), which mode bits do not stop. The local engines bind
        the directory read-only (Capability.READONLY_FILES).
        """
        with self._errors("write files"):
            if from_snapshot:  # the image has the source sandbox's files: start from none
                sb.exec("sh", "-c", FILES_CLEAR, FILES_DIR, text=False).wait()
            for name, content in files.items():
                sb.filesystem.write_bytes(content, f"{FILES_DIR}/{name}")
            paths = [f"{FILES_DIR}/{name}" for name in files]
            proc = sb.exec("sh", "-c", FILES_SEAL, FILES_DIR, *paths, text=False)
            if proc.wait() != 0:
                raise SandboxError(f"cannot make {FILES_DIR} read-only")

    def attach(self, external_id: str) -> SandboxHandle:
        with self._errors("attach"):
            sb = self.sdk.Sandbox.from_id(external_id)
            if sb.returncode is not None:
                raise SandboxError(f"Modal sandbox {external_id} has finished")
            labels = sb.get_tags()
        self._sandboxes[external_id] = sb
        return SandboxHandle(backend=self.name, external_id=external_id, labels=labels)

    def list(self, labels: Mapping[str, str]) -> list[SandboxHandle]:
        """Running sandboxes of our Modal app that carry at least these labels (for reaping)."""
        app = self._app_get()
        handles = []
        with self._errors("list"):
            for sb in self.sdk.Sandbox.list(app_id=app.app_id, tags=dict(labels) or None):
                handles.append(
                    SandboxHandle(backend=self.name, external_id=sb.object_id, labels=sb.get_tags())
                )
        return handles

    def terminate(self, handle: SandboxHandle) -> None:
        try:
            sb = self._sandbox(handle)
        except SandboxError as exc:
            if isinstance(exc.__cause__, self.sdk.exception.NotFoundError):
                return  # already gone
            raise
        with self._errors("terminate"):
            sb.terminate()  # a no-op on a finished sandbox
        self._sandboxes.pop(handle.external_id, None)
        with contextlib.suppress(Exception):
            sb.detach()  # frees this client's connections to it; the sandbox is gone anyway

    # --- files ------------------------------------------------------------------------------------
    def write_file(self, handle: SandboxHandle, path: str, data: bytes, mode: int = 0o644) -> None:
        sb = self._sandbox(handle)
        remote = self._path(path)
        with self._errors(f"write {remote}"):
            sb.filesystem.write_bytes(data, remote)
            if mode != 0o644:
                proc = sb.exec("chmod", format(mode, "o"), remote, text=False)
                if proc.wait() != 0:
                    raise SandboxError(f"cannot set mode {mode:o} on {remote}")

    def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        sb = self._sandbox(handle)
        remote = self._path(path)
        with self._errors(f"read {remote}"):
            return sb.filesystem.read_bytes(remote)

    # --- exec ---------------------------------------------------------------------------------
    def exec(
        self,
        handle: SandboxHandle,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        output_cap: int = 10 * 1024 * 1024,
        last: bool = False,  # the sandbox already runs; an exec costs the same either way
    ) -> Iterator[ExecEvent]:
        if not argv:
            raise SandboxError("exec needs a command")
        sb = self._sandbox(handle)
        started = time.monotonic()
        exec_id = secrets.token_hex(8)
        with self._errors("exec"):
            proc = sb.exec(
                "sh",
                "-c",
                EXEC_WRAPPER,
                exec_id,
                *argv,
                workdir=self._path(cwd or "."),  # explicit: exec need not inherit the workdir
                env=dict(env) if env else None,
                # Modal takes whole seconds; its deadline makes wait() return -1.
                timeout=max(1, math.ceil(timeout_s)) if timeout_s else None,
                text=False,
            )
        # Modal delivers stdout and stderr as two streams: read both at once, in arrival order.
        events: queue.Queue = queue.Queue()
        stop = threading.Event()

        def pump(stream_name: str, stream) -> None:
            try:
                for chunk in stream:
                    if stop.is_set():
                        break
                    if chunk:
                        events.put((stream_name, chunk))
            except Exception as exc:
                events.put((stream_name, exc))
            finally:
                events.put((stream_name, None))

        for stream_name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            threading.Thread(
                target=pump, args=(stream_name, stream), daemon=True, name=f"modal-{stream_name}"
            ).start()

        open_streams, sent, truncated = 2, 0, False
        failure: BaseException | None = None
        try:
            while open_streams:
                stream_name, item = events.get()
                if item is None:
                    open_streams -= 1
                elif isinstance(item, BaseException):
                    failure = failure or item
                elif len(item) <= output_cap - sent:
                    sent += len(item)
                    yield ExecOutput(stream_name, item)
                else:
                    if output_cap > sent:
                        yield ExecOutput(stream_name, item[: output_cap - sent])
                        sent = output_cap
                    yield ExecOutput("stderr", truncation_marker(output_cap))
                    truncated = True
                    break
            if failure is not None:
                with self._errors("exec output"):
                    raise failure
            if truncated:
                stop.set()
                exit_code = self._exec_stop(sb, proc, exec_id)
            else:
                with self._errors("exec wait"):
                    exit_code = proc.wait()
        finally:
            stop.set()
        timed_out = exit_code == -1  # Modal's wait() says "deadline passed" this way
        yield ExecResult(
            exit_code=TIMEOUT_EXIT if timed_out else exit_code,
            timed_out=timed_out,
            truncated=truncated,
            duration_ms=int((time.monotonic() - started) * 1000),
            bytes_out=sent,
        )

    def _exec_stop(self, sb, proc, exec_id: str) -> int:
        """Kill a command that flooded its output cap (Modal has no call to kill one exec)."""
        with contextlib.suppress(Exception):  # best effort: the exec deadline is the backstop
            sb.exec("sh", "-c", EXEC_KILL, exec_id, text=False).wait()
        deadline = time.monotonic() + KILL_GRACE_S
        while (code := proc.poll()) is None:
            if time.monotonic() > deadline:
                logger.warning("Modal exec %s outlived its kill after flooding output", exec_id)
                return KILLED_EXIT
            time.sleep(0.05)
        return code

    # --- snapshots and forks ----------------------------------------------------------------------
    def snapshot(self, handle: SandboxHandle) -> SnapshotHandle:
        sb = self._sandbox(handle)
        with self._errors("snapshot"):
            image = sb.snapshot_filesystem(timeout=SNAPSHOT_TIMEOUT_S, ttl=None)
        self._images[image.object_id] = image
        return SnapshotHandle(backend=self.name, external_id=image.object_id)

    def _image(self, snapshot: SnapshotHandle):
        image = self._images.get(snapshot.external_id)
        if image is None:
            with self._errors("image lookup"):
                image = self.sdk.Image.from_id(snapshot.external_id)
            self._images[snapshot.external_id] = image
        return image

    def create_from_snapshot(self, snapshot: SnapshotHandle, spec: SandboxSpec) -> SandboxHandle:
        return self._create(spec, self._image(snapshot), from_snapshot=True)

    def fork(self, snapshot: SnapshotHandle, spec: SandboxSpec, count: int) -> list[SandboxHandle]:
        """N creates from the snapshot's image, a few at a time; all or none survive."""
        image = self._image(snapshot)
        workers = max(1, min(count, self._fork_concurrency))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modal-fork") as pool:
            futures = [
                pool.submit(self._create, spec, image, from_snapshot=True) for _ in range(count)
            ]
        made, errors = [], []
        for future in futures:
            try:
                made.append(future.result())
            except SandboxError as exc:
                errors.append(exc)
        if errors:
            for handle in made:
                with contextlib.suppress(SandboxError):  # else the reaper finds it by label
                    self.terminate(handle)
            raise errors[0]
        return made

    def delete_snapshot(self, snapshot: SnapshotHandle) -> None:
        """Modal's SDK has no call that deletes an image: forget it; no sandbox uses it again."""
        self._images.pop(snapshot.external_id, None)
