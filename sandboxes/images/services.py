"""Image verbs: ensure (build once, share, wait for another builder), remove and prune.

One build per key at a time: a process claims the key with a conditional UPDATE of the Image
row (`state`/`builder` as last read), the same on SQLite and PostgreSQL, and holds no database
transaction or lock while it builds (a build takes minutes; an open SQLite write transaction
would stop every other write). Others poll the row. A claim is taken over when its builder is
a process of this host that is gone, or has not written a heartbeat for `STALE_AFTER_S`.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.record import audit_record
from core.errors import Conflict, Invalid, NotFound, Unavailable
from sandboxes.images.build import (
    BuildLog,
    ImageBuildError,
    build_tree_remove,
    image_dir,
    image_log_path,
    leftovers_remove,
    manifest_read,
    rootfs_build,
)
from sandboxes.images.hostconfig import apt_sources_digest, host_architecture
from sandboxes.images.network import BuildNetwork
from sandboxes.images.oci import OciError, oci_digest
from sandboxes.images.proxy_network import proxy_network
from sandboxes.images.spec import ImageSpec, image_key, image_spec_parse
from sandboxes.models import Image, ImageState

STALE_AFTER_S = 600.0
HEARTBEAT_EVERY_S = 10.0
POLL_S = 0.5
HOST = socket.gethostname()


def _who(actor) -> dict:
    return {"actor": actor} if actor is not None else {"actor_type": "system"}


def image_resolve(*, spec: ImageSpec, creds: str | None = None) -> tuple[str, dict]:
    """The key and the resolved base: for Debian the suite, architecture and the host's apt
    sources; for OCI the manifest digest the reference points at now."""
    if spec.kind == "oci":
        try:
            resolved = {"digest": oci_digest(spec, creds=creds)}
        except OciError as exc:
            if exc.not_found:
                raise Invalid(f"{spec.oci}: not found in the registry", field="image.oci") from exc
            if exc.refused:
                raise Invalid(str(exc), field="image.oci") from exc
            # A fixed text (oci.py's): what the registry sent never reaches the manager.
            raise Unavailable(f"image.oci {spec.oci}: {exc}", field="image.oci") from exc
    else:
        resolved = {
            "suite": spec.base,
            "arch": host_architecture(),
            "apt_sources": apt_sources_digest(),
        }
    return image_key(spec, resolved_base=resolved), resolved


def _builder_gone(image: Image) -> bool:
    host, _, rest = image.builder.partition(":")
    pid = rest.partition(":")[0]
    if host == HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    heartbeat = image.heartbeat_at or image.created_at
    return timezone.now() - heartbeat > timedelta(seconds=STALE_AFTER_S)


def _claim(image: Image, me: str) -> bool:
    """Take the build of this key from the state last read; False if another process did."""
    return bool(
        Image.objects.filter(pk=image.pk, state=image.state, builder=image.builder).update(
            state=ImageState.BUILDING,
            builder=me,
            heartbeat_at=timezone.now(),
            builds=F("builds") + 1,
            error="",
            error_field="",
        )
    )


def _adopt(image: Image, manifest: dict) -> Image:
    """Files complete on disk, row not saying so (a lost database, a build that died after its
    rename): mark ready without building."""
    Image.objects.filter(pk=image.pk).update(
        state=ImageState.READY,
        size_bytes=manifest.get("size_bytes", 0),
        built_at=image.built_at or timezone.now(),
        last_used_at=timezone.now(),
        build_log_path=image.build_log_path or str(image_log_path(image.key)),
        builder="",
    )
    image.refresh_from_db()
    return image


def image_ensure(
    *,
    spec: ImageSpec | dict | str,
    actor,
    on_output: Callable[[str], None] | None = None,
    creds: str | None = None,
    network: BuildNetwork | None = None,
    network_allow: Sequence[str] = (),
    audit_context: Mapping[str, int] | None = None,
    timeout_s: float = 3600.0,
) -> Image:
    """The ready image for `spec`: the cached one, one built now, or one another process is
    building (waited for). Raises Invalid naming the spec field for a spec that cannot build,
    Unavailable for a host or network failure or a wait past `timeout_s`.

    A build's steps reach the network through the egress proxy: the host's package indexes
    plus `network_allow` (the allow list of the campaign whose run triggers the build);
    `audit_context` (campaign_id, run_id) goes on the audit events of its connections.
    `network` replaces that (tests pass `host_network`)."""
    if not isinstance(spec, ImageSpec):
        spec = image_spec_parse(spec)
    if network is None:
        network = proxy_network(allow=network_allow, actor=actor, context=audit_context)
    key, resolved = image_resolve(spec=spec, creds=creds)
    me = f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"
    deadline = time.monotonic() + timeout_s
    told_waiting = False
    while True:
        image, created = Image.objects.get_or_create(
            key=key,
            defaults={"kind": spec.kind, "spec": spec.canonical(), "state": ImageState.BUILDING,
                      "builder": me, "heartbeat_at": timezone.now(), "builds": 1},
        )  # fmt: skip
        manifest = manifest_read(key)
        if image.state == ImageState.READY and manifest is not None:
            Image.objects.filter(pk=image.pk).update(last_used_at=timezone.now())
            return image
        if created or (image.state != ImageState.BUILDING and _claim(image, me)):
            return _build_claimed(image, spec, resolved, actor, on_output, creds, network, me)
        if image.state == ImageState.BUILDING and _builder_gone(image):
            if manifest is not None:
                if Image.objects.filter(pk=image.pk, builder=image.builder).update(builder=me):
                    return _adopt(image, manifest)
            elif _claim(image, me):
                return _build_claimed(image, spec, resolved, actor, on_output, creds, network, me)
        if image.state == ImageState.BUILDING and not told_waiting and on_output:
            on_output(f"waiting for image {key[:12]}, being built by {image.builder}")
            told_waiting = True
        if time.monotonic() > deadline:
            raise Unavailable(f"image {key[:12]} is still being built by {image.builder}")
        time.sleep(POLL_S)


def _build_claimed(image, spec, resolved, actor, on_output, creds, network, me) -> Image:
    key = image.key
    manifest = manifest_read(key)
    if manifest is not None:
        return _adopt(image, manifest)
    leftovers_remove(key)
    last_beat = [time.monotonic()]

    def output(text: str) -> None:
        if on_output is not None:
            on_output(text)
        if time.monotonic() - last_beat[0] > HEARTBEAT_EVERY_S:
            last_beat[0] = time.monotonic()
            Image.objects.filter(pk=image.pk, builder=me).update(heartbeat_at=timezone.now())

    log = BuildLog(image_log_path(key), output)
    Image.objects.filter(pk=image.pk).update(build_log_path=str(log.path))
    try:
        result = rootfs_build(
            spec=spec, key=key, resolved_base=resolved, log=log, network=network, creds=creds
        )
    except ImageBuildError as exc:
        log.line(f"image build failed: {exc.field}: {exc.message}")
        _failed(image, me, actor, field=exc.field, message=exc.message)
        error = Unavailable if exc.transient else Invalid
        raise error(f"{exc.field}: {exc.message}", field=exc.field) from exc
    except BaseException as exc:
        log.line(f"image build failed: {exc!r}")
        _failed(image, me, actor, field="image", message=f"build interrupted: {exc!r}"[:500])
        raise
    finally:
        log.close()
    with transaction.atomic():
        Image.objects.filter(pk=image.pk).update(
            state=ImageState.READY, builder="", size_bytes=result.size_bytes,
            build_seconds=result.seconds, built_at=timezone.now(), last_used_at=timezone.now(),
        )  # fmt: skip
        image.refresh_from_db()
        audit_record(
            action="sandbox.image.built",
            **_who(actor),
            target=image,
            payload={"key": key, "kind": spec.kind, "seconds": round(result.seconds, 1),
                     "size_bytes": result.size_bytes, "spec": spec.canonical()},
        )  # fmt: skip
    return image


def _failed(image: Image, me: str, actor, *, field: str, message: str) -> None:
    with transaction.atomic():
        Image.objects.filter(pk=image.pk, builder=me).update(
            state=ImageState.FAILED, builder="", error=message, error_field=field
        )
        audit_record(
            action="sandbox.image.failed",
            **_who(actor),
            target=image,
            outcome="failure",
            reason=f"{field}: {message}"[:500],
            payload={"key": image.key, "kind": image.kind, "build_log": image.build_log_path},
        )


def image_remove(*, key: str, actor, force: bool = False) -> None:
    """Delete an image's files and row. Refused while it builds (unless the builder is gone)."""
    image = Image.objects.filter(key=key).first()
    if image is None:
        raise NotFound(f"no image {key}")
    if image.state == ImageState.BUILDING and not force and not _builder_gone(image):
        raise Conflict(f"image {key[:12]} is being built")
    with transaction.atomic():
        deleted = Image.objects.filter(pk=image.pk, state=image.state, builder=image.builder)
        if not deleted.delete()[0]:
            raise Conflict(f"image {key[:12]} changed while being removed")
        audit_record(
            action="sandbox.image.removed",
            **_who(actor),
            target={"type": "sandboxes.image", "id": image.pk, "display": str(image)},
            payload={"key": key, "size_bytes": image.size_bytes},
        )
    build_tree_remove(image_dir(key))
    image_log_path(key).unlink(missing_ok=True)
    leftovers_remove(key)


def image_prune(*, in_use_keys: set[str], actor) -> list[str]:
    """Remove every image whose key is not in `in_use_keys` (the caller gathers the keys its
    campaigns, runs and sandboxes use) and that is not being built; the keys removed."""
    removed = []
    for image in Image.objects.exclude(key__in=in_use_keys).exclude(state=ImageState.BUILDING):
        try:
            image_remove(key=image.key, actor=actor)
        except (Conflict, NotFound):
            continue  # someone started building or removed it meanwhile
        removed.append(image.key)
    return removed
