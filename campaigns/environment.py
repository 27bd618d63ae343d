"""A run's environment: the campaign image (ensured once, shared), the tools area, the
checkout's git excludes and the diff size limit (docs/images.md). Backends that build images
themselves (Capability.IMAGE_SPEC: Modal, Daytona, E2B) get the normalised spec instead of a
local build.

The pipeline calls `run_environment_prepare` once per run, gives `run_excludes_text` to each
checkout (written as the checkout's `.git/info/exclude`) and reads each diff with `diff_read`
(strictly, with its size limit); `image_keys_in_use` is what prune keeps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from campaigns.models import Campaign, CampaignState, RepoRun, RunState
from campaigns.secret_grants import secret_value_for_campaign
from campaigns.states import RunFailed
from core.errors import Conflict, Invalid, PermissionDenied, Unavailable
from core.patches import PatchError, PatchFile, PatchTooLarge, patch_read
from sandboxes.backends.base import Capability, SandboxError, SandboxSpec
from sandboxes.backends.images import HOME_DIR, HOME_IN_WORKSPACE
from sandboxes.images.build import manifest_read
from sandboxes.images.mounts import image_env, image_rootfs
from sandboxes.images.proxy_network import network_allow
from sandboxes.images.services import image_ensure, image_prune, image_remove, image_resolve
from sandboxes.images.spec import ImageSpec, image_key, image_spec_parse
from sandboxes.models import Image, ImageState, Sandbox, SandboxState

logger = logging.getLogger(__name__)

MB = 1024 * 1024
STEP_OUTPUT_ROOM = 8 * MB  # what the last transform step may print besides the patch


def _creds(image_spec: ImageSpec, *, campaign_id: int) -> str | None:
    if not image_spec.credentials_secret:
        return None
    name = image_spec.credentials_secret
    try:  # only a secret an admin granted to this campaign (or its owner); the use is audited
        return secret_value_for_campaign(campaign_id=campaign_id, name=name)
    except (PermissionDenied, RunFailed) as exc:
        raise RunFailed(f"image.credentials_secret: {exc}") from None


# Ready Debian images this worker process found, by normalised spec: (when, image). Their key
# depends only on the spec and the host's architecture and apt sources, so the next runs skip
# the resolve (two dpkg processes), the ensure's queries and its last_used_at write for a
# while (a reuse checks the image's files are still there: a prune in between is caught).
# OCI images are resolved each run: a tag can move and registry credentials are audited per use.
_READY: dict[str, tuple[float, Image]] = {}
READY_REUSE_S = 60.0


def run_image(*, run: RepoRun, spec: dict, actor) -> Image | None:
    """The ready image of the run's campaign (built here by the first run that needs it; later
    runs and campaigns asking for the same spec find it). A build that failed for this campaign
    fails its other runs at once, with the same message, instead of building again; a retried
    run (attempt > 1) builds again."""
    if not spec.get("image"):
        return None
    image_spec = image_spec_parse(spec["image"])
    cache_key = json.dumps(image_spec.canonical(), sort_keys=True)
    cached = _READY.pop(cache_key, None) if image_spec.kind != "oci" else None
    if cached and time.monotonic() - cached[0] < READY_REUSE_S and manifest_read(cached[1].key):
        _READY[cache_key] = cached
        RepoRun.objects.filter(pk=run.pk).update(image_key=cached[1].key)
        return cached[1]
    creds = _creds(image_spec, campaign_id=run.campaign_id)
    key = ""
    try:
        key, _ = image_resolve(spec=image_spec, creds=creds)
        failed = Image.objects.filter(key=key, state=ImageState.FAILED).first()
        launched = run.campaign.launched_at
        if (
            failed
            and run.attempt == 1
            and launched
            and (failed.heartbeat_at or launched) >= launched
        ):
            raise Invalid(failed.error, field=failed.error_field or "image")
        image = image_ensure(
            spec=image_spec, actor=actor, creds=creds, on_output=logger.debug,
            network_allow=network_allow(spec.get("network", "none")),
            audit_context={"campaign_id": run.campaign_id, "run_id": run.pk},
        )  # fmt: skip
    except Invalid as exc:
        log = Image.objects.filter(key=key).values_list("build_log_path", flat=True).first()
        # The log's host path means nothing to a manager: name where the page shows it.
        where = f" (build log: Images page, image {key[:12]})" if key and log else ""
        field = exc.field or "image"
        text = exc.message if exc.message.startswith(f"{field}:") else f"{field}: {exc.message}"
        raise RunFailed(f"image build failed: {text}{where}") from None
    except Unavailable as exc:
        raise SandboxError(f"image: {exc.message}", transient=True) from None
    RepoRun.objects.filter(pk=run.pk).update(image_key=image.key)
    if image_spec.kind != "oci":
        _READY[cache_key] = (time.monotonic(), image)
    return image


def engine_image_key(image_spec: ImageSpec, *, backend: str) -> str:
    """The key of an image a cloud engine builds: the normalised spec and the engine (nothing
    is resolved on this host; the engine pins what it pulls)."""
    return image_key(image_spec, resolved_base={"built_by": backend})


def _engine_image_prepare(ctx) -> SandboxSpec:
    """The spec for an engine that builds the image itself: the normalised `image:` value,
    its key (kept on the run, as for local images) and the registry login, if any."""
    try:
        image_spec = image_spec_parse(ctx.spec["image"])
    except Invalid as exc:  # the campaign spec was checked at launch: an altered row
        raise RunFailed(f"{exc.field or 'image'}: {exc.message}") from None
    creds = _creds(image_spec, campaign_id=ctx.run.campaign_id)
    key = engine_image_key(image_spec, backend=ctx.backend.name)
    RepoRun.objects.filter(pk=ctx.run.pk).update(image_key=key)
    ctx.home = HOME_DIR
    canonical = {k: v for k, v in image_spec.canonical().items() if k != "kind"}
    return dataclasses.replace(
        ctx.sandbox_spec,
        image_spec=canonical,
        image_key=key,
        image_credentials=creds,
        tools_home=True,
    )


def run_environment_prepare(*, ctx) -> SandboxSpec:
    """The run's sandbox spec on its campaign's image, with the tools area (`ctx` is the
    pipeline's run context; sets `ctx.home`, the $HOME of every step). Without `image:` the
    spec is unchanged: the host's /usr (or the engine's default image), HOME=/tmp."""
    ctx.home = "/tmp"  # noqa: S108 - the sandbox's own tmpfs
    if not ctx.spec.get("image"):
        return ctx.sandbox_spec
    if Capability.IMAGE_SPEC in ctx.backend.capabilities:
        return _engine_image_prepare(ctx)
    if Capability.IMAGES not in ctx.backend.capabilities:
        raise RunFailed(
            f"image: the {ctx.backend.name} backend cannot run campaign images; the local "
            "(bubblewrap, gvisor), modal and daytona backends can"
        )
    actor = ctx.campaign.launched_by or ctx.campaign.owner
    image = run_image(run=ctx.run, spec=ctx.spec, actor=actor)
    try:
        root = image_rootfs(image)
    except Conflict as exc:  # removed between the ensure and now: the run is retried
        raise SandboxError(exc.message, transient=True) from None
    ctx.home = HOME_DIR
    return dataclasses.replace(
        ctx.sandbox_spec,
        image_root=str(root),
        image_key=image.key,
        image_env=image_env(image),
        tools_home=True,
    )


def run_excludes_text(spec: dict) -> str:
    """`.git/info/exclude` of a fresh checkout: the tools area and the spec's `diff.exclude`
    patterns, so `git add -A` (the diff) never takes them."""
    patterns = [f"/{HOME_IN_WORKSPACE}/", *spec.get("diff", {}).get("exclude", [])]
    return "# written by Convoy: never part of a variant's diff\n" + "\n".join(patterns) + "\n"


def diff_max_bytes(spec: dict) -> int:
    return int(spec.get("diff", {}).get("max_mb") or 5) * MB


def diff_cap_bytes(spec: dict) -> int:
    """The output cap of the command that prints the diff: past it the diff is too large."""
    return diff_max_bytes(spec) + STEP_OUTPUT_ROOM


def diff_read(spec: dict, patch: bytes, truncated: bool = False) -> list[PatchFile]:
    """The files of a variant's patch, read strictly on the host (`core.patches`): RunFailed
    (the variant fails with this message) for a patch git would read otherwise than shown, or
    one over `limits.max_diff_mb`.

    A binary file counts at its full size, not at its compressed size in the patch: zeros
    compress about 1,000 to 1, and publishing inflates every one of them on the host. The sizes
    come from the decoded data, never from a header the transform could bend."""
    limit = diff_max_bytes(spec)
    if truncated:
        raise _over_limit(len(patch), limit, more=True)
    try:
        files = patch_read(patch, inflate_cap=limit)
    except PatchTooLarge:
        raise _over_limit(limit + 1, limit, more=True) from None
    except PatchError as exc:
        raise RunFailed(f"the diff could not be read: {exc.message}") from None
    size = len(patch) + sum(f.forward.result_size for f in files if f.forward)
    if size > limit:
        raise _over_limit(size, limit)
    return files


def diff_limit_check(spec: dict, patch: bytes, truncated: bool) -> None:
    """RunFailed for a diff over `limits.max_diff_mb` (or that cannot be read): `diff_read`."""
    diff_read(spec, patch, truncated)


def _over_limit(size: int, limit: int, *, more: bool = False) -> RunFailed:
    return RunFailed(
        f"the diff is {'more than ' if more else ''}{size / MB:.1f} MB, over limits.max_diff_mb "
        f"({limit // MB} MB): exclude generated files with diff.exclude or write them "
        f"under {HOME_DIR}"
    )


def binary_patch_bytes(patch: bytes, *, cap: int = 1024 * MB) -> int:
    """What the binary files of a git patch come to once applied: a `literal`'s decoded size
    (git refuses data that does not inflate to its header's), a `delta`'s result size (from the
    delta's own header, which git checks). PatchError for a patch that cannot be read."""
    files = patch_read(patch, inflate_cap=cap)
    return sum(f.forward.result_size for f in files if f.forward)


def image_keys_in_use() -> set[str]:
    """Keys of images a campaign, run or sandbox uses: runs not final, runs of campaigns not
    finished (a retry reuses the key), live sandboxes; and draft campaigns' Debian images
    (their key is known without a registry)."""
    active = RepoRun.objects.exclude(image_key="").filter(
        state__in=[RunState.PENDING, RunState.QUEUED, RunState.RUNNING]
    )
    unfinished = RepoRun.objects.exclude(image_key="").exclude(
        campaign__state__in=[CampaignState.COMPLETED, CampaignState.CANCELLED]
    )
    live = Sandbox.objects.filter(state__in=[SandboxState.CREATING, SandboxState.RUNNING])
    keys = set(active.values_list("image_key", flat=True))
    keys |= set(unfinished.values_list("image_key", flat=True))
    keys |= set(live.exclude(image="").values_list("image", flat=True))
    for spec in Campaign.objects.filter(state=CampaignState.DRAFT).values_list("spec", flat=True):
        if (spec or {}).get("image") and "oci" not in spec["image"]:
            try:
                keys.add(image_resolve(spec=image_spec_parse(spec["image"]))[0])
            except Invalid:
                continue
    return keys


def images_prune(*, actor, keep: set[str] | None = None) -> list[str]:
    """Remove every image no campaign, run or sandbox uses (and not in `keep`)."""
    return image_prune(in_use_keys=image_keys_in_use() | (keep or set()), actor=actor)


def image_users(*, keys: list[str]) -> dict[str, list[Campaign]]:
    """For the Images page: the campaigns whose runs used each image, newest first."""
    users: dict[str, list[Campaign]] = {}
    pairs = (
        RepoRun.objects.filter(image_key__in=keys)
        .values_list("image_key", "campaign_id")
        .distinct()
    )
    campaigns = Campaign.objects.in_bulk({cid for _, cid in pairs})
    for key, cid in pairs:
        users.setdefault(key, []).append(campaigns[cid])
    for listed in users.values():
        listed.sort(key=lambda c: c.created_at, reverse=True)
    return users


def image_remove_unused(*, key: str, actor) -> None:
    """Remove one image (files and row, audited); Conflict while a campaign, run or sandbox
    uses it."""
    if key in image_keys_in_use():
        raise Conflict(f"image {key[:12]} is in use by a campaign, a run or a sandbox")
    image_remove(key=key, actor=actor)
