"""Campaign writes: create, launch, cancel, retry, slot-based dispatch and the per-repo pipeline.

Run states move only through `runs_transition` (UPDATE … WHERE state IN expected), which also
stores a RunTransition row per move. Every step of the pipeline is idempotent: a run whose
worker died is requeued when its lease expires and continues from its snapshot; variants that
completed are never run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import secrets as pysecrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from audit.services import audit_record
from campaigns.models import (
    RUN_ACTIVE_STATES,
    RUN_FINAL_STATES,
    RUN_TRANSITIONS,
    Campaign,
    CampaignState,
    RepoRun,
    Repository,
    RunState,
    RunTransition,
    Secret,
    Validation,
    Variant,
    VariantState,
)
from campaigns.signals import variant_diff_stored
from campaigns.spec import CampaignSpecError, FieldError, ParsedSpec, spec_parse, spec_validate
from core.errors import Conflict, Invalid

logger = logging.getLogger(__name__)

REPO_DIR = "/workspace"
OUTPUT_TAIL_BYTES = 4000
PATCH_CAP_BYTES = 2 * 1024 * 1024
CHECK_EVERY_S = 0.25  # how often a run's steps ask whether it was cancelled
MAX_TRANSIENT_RETRIES = 4
VARIANT_THREADS = 3


class CampaignStateError(Conflict):
    """The campaign is not in a state that allows this action."""


class RunFailed(Exception):
    """A repository-level failure (fetch, checkout, setup): retrying will not help by itself."""


class RunStopped(Exception):
    """The run was cancelled or lost its lease while working."""


# --- transitions ----------------------------------------------------------------------------


def runs_transition(
    *, runs: QuerySet, from_states: Iterable[str], to_state: str, **fields
) -> list[int]:
    """Move every run in `runs` that is in one of `from_states` to `to_state`; return their ids.

    The only way run states change. Rows are locked first, so the ids returned are exactly the
    rows moved, and two workers can never both move the same run.
    """
    from_states = list(from_states)
    for state in from_states:
        if to_state not in RUN_TRANSITIONS[RunState(state)]:
            raise ValueError(f"illegal run transition {state} -> {to_state}")
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            runs.select_for_update()
            .filter(state__in=from_states)
            .values_list("pk", "state", "campaign_id")
        )
        if not rows:
            return []
        ids = [pk for pk, _, _ in rows]
        moved = 0
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            moved += RepoRun.objects.filter(pk__in=chunk, state__in=from_states).update(
                state=to_state, **fields
            )
        assert moved == len(ids), "locked rows changed under the lock"
        RunTransition.objects.bulk_create(
            [
                RunTransition(
                    run_id=pk, campaign_id=cid, from_state=state, to_state=to_state, at=now
                )
                for pk, state, cid in rows
            ],
            batch_size=2000,
        )
    return ids


def run_transition(*, run_id: int, from_state: str, to_state: str, **fields) -> bool:
    return bool(
        runs_transition(
            runs=RepoRun.objects.filter(pk=run_id),
            from_states=[from_state],
            to_state=to_state,
            **fields,
        )
    )


def variant_transition(*, variant_id: int, from_state: str, to_state: str, **fields) -> bool:
    return bool(
        Variant.objects.filter(pk=variant_id, state=from_state).update(state=to_state, **fields)
    )


# --- errors ---------------------------------------------------------------------------------

_SHA_RE = re.compile(r"\b[0-9a-f]{7,64}\b")
_PATH_RE = re.compile(r"(?:/[\w.+@-]+)+/?")
_NUM_RE = re.compile(r"\d+")
_QUOTED_RE = re.compile(r"'[^']*'|\"[^\"]*\"")


def error_signature(text: str) -> tuple[str, str]:
    """(signature, summary) from the tail of an error: ids, paths and numbers normalised away,
    so the same failure in different repositories clusters together."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()][-3:]
    tail = " | ".join(lines)
    norm = _SHA_RE.sub("<sha>", tail)
    norm = _PATH_RE.sub("<path>", norm)
    norm = _QUOTED_RE.sub("'…'", norm)
    norm = _NUM_RE.sub("N", norm)
    return hashlib.sha256(norm.encode()).hexdigest()[:12], norm[:300]


# --- secrets --------------------------------------------------------------------------------


def _fernet():
    from cryptography.fernet import Fernet

    key = settings.SECRETS_KEY
    if not key:
        if not (settings.EMBEDDED or settings.DEBUG or settings.TESTING):
            raise ImproperlyConfigured(
                "CONVOY_SECRETS_KEY: required to store secrets in the production shape "
                "(generate one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            )
        path = Path(settings.DATA_DIR) / "secrets.key"
        if not path.exists():
            path.write_bytes(Fernet.generate_key())
            path.chmod(0o600)
        key = path.read_text().strip()
    try:
        return Fernet(key.encode() if isinstance(key, str) else key)
    except ValueError as exc:
        raise ImproperlyConfigured(f"CONVOY_SECRETS_KEY: not a valid Fernet key ({exc})") from None


SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def secret_set(*, name: str, value: str, actor) -> Secret:
    """Store or rotate a secret. The value is encrypted and can never be read back by people."""
    if not SECRET_NAME_RE.match(name or ""):
        raise Invalid("use letters, digits and '_' (an environment variable name)", field="name")
    if not value:
        raise Invalid("must not be empty", field="value")
    token = _fernet().encrypt(value.encode())
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(name=name).first()
        if secret is None:
            secret = Secret.objects.create(name=name, ciphertext=token, created_by=actor)
            action = "secret.secret.created"
        else:
            secret.ciphertext = token
            secret.rotated_at = timezone.now()
            secret.save(update_fields=["ciphertext", "rotated_at"])
            action = "secret.secret.rotated"
        audit_record(action=action, actor=actor, target=secret, payload={"name": name})
    return secret


def secret_values(*, names: Iterable[str]) -> dict[str, str]:
    """Decrypt the named secrets for injection into a sandbox; never for display."""
    names = list(names)
    if not names:
        return {}
    fernet = _fernet()
    found = {s.name: s for s in Secret.objects.filter(name__in=names)}
    missing = [n for n in names if n not in found]
    if missing:
        raise RunFailed(f"secret(s) not stored: {', '.join(missing)}")
    return {n: fernet.decrypt(bytes(found[n].ciphertext)).decode() for n in names}


# --- create, update, launch, cancel, retry ----------------------------------------------------


def _spec_from(*, source: str | bytes | None, data: dict | None) -> ParsedSpec:
    if source is not None:
        return spec_parse(source)
    return ParsedSpec(data=spec_validate(data), lines={}, source="")


def _spec_db_checks(parsed: ParsedSpec, *, exclude_pk: int | None = None) -> None:
    errors = []
    spec = parsed.data
    if Campaign.objects.filter(name=spec["name"]).exclude(pk=exclude_pk).exists():
        errors.append(
            FieldError(
                "name", f"a campaign named {spec['name']!r} exists", parsed.lines.get("name")
            )
        )
    stored = set(Secret.objects.filter(name__in=spec["secrets"]).values_list("name", flat=True))
    for i, name in enumerate(spec["secrets"]):
        if name not in stored:
            path = f"secrets[{i}]"
            errors.append(
                FieldError(path, f"no stored secret named {name!r}", parsed.lines.get(path))
            )
    if isinstance(spec["repos"], dict) and not _repos_by_tag(spec["repos"]["tag"]):
        errors.append(
            FieldError(
                "repos.tag",
                f"no registered repository has the tag {spec['repos']['tag']!r}",
                parsed.lines.get("repos.tag"),
            )
        )
    if errors:
        raise CampaignSpecError(errors)


def _campaign_fields(spec: dict) -> dict:
    return {
        "name": spec["name"],
        "description": spec["description"],
        "spec": spec,
        "backend": spec["backend"],
        "max_parallel": spec["max_parallel"],
        "four_eyes": spec["review"]["four_eyes"],
    }


def campaign_create(
    *, actor, source: str | bytes | None = None, data: dict | None = None
) -> Campaign:
    """Validate a spec (YAML/JSON text or already-loaded data) and store a draft campaign."""
    parsed = _spec_from(source=source, data=data)
    _spec_db_checks(parsed)
    with transaction.atomic():
        campaign = Campaign.objects.create(
            **_campaign_fields(parsed.data), spec_source=parsed.source, owner=actor
        )
        audit_record(
            action="campaign.campaign.created",
            actor=actor,
            target=campaign,
            context={"campaign_id": campaign.pk},
            payload={"name": campaign.name, "backend": campaign.backend},
        )
    return campaign


def campaign_update(
    *, campaign: Campaign, actor, source: str | bytes | None = None, data: dict | None = None
) -> Campaign:
    """Replace a draft campaign's spec."""
    parsed = _spec_from(source=source, data=data)
    _spec_db_checks(parsed, exclude_pk=campaign.pk)
    fields = _campaign_fields(parsed.data)
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.state != CampaignState.DRAFT:
            raise CampaignStateError(f"campaign is {locked.state}; only drafts can be changed")
        changes = {
            k: [getattr(locked, k), v]
            for k, v in fields.items()
            if k != "spec" and getattr(locked, k) != v
        }
        if locked.spec != parsed.data:
            changes["spec"] = "replaced"
        for key, value in fields.items():
            setattr(locked, key, value)
        locked.spec_source = parsed.source
        locked.save()
        audit_record(
            action="campaign.campaign.updated",
            actor=actor,
            target=locked,
            context={"campaign_id": locked.pk},
            changes=changes,
        )
    return locked


def _repo_name(url: str) -> str:
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return (tail[:-4] if tail.endswith(".git") else tail) or url[-200:]


def _repos_by_tag(tag: str) -> list[int]:
    qs = Repository.objects.all()
    if connection.vendor == "postgresql":
        return list(qs.filter(tags__contains=[tag]).values_list("pk", flat=True))
    return [pk for pk, tags in qs.values_list("pk", "tags") if tag in (tags or [])]


def repositories_register(*, entries: list[dict], tags: Iterable[str] = ()) -> list[Repository]:
    """Register repositories by URL (idempotent); new ones get `tags`."""
    from sandboxes.repos import repo_url_validate

    urls = [repo_url_validate(e["url"]) for e in entries]
    Repository.objects.bulk_create(
        [
            Repository(
                url=url,
                name=_repo_name(url),
                default_ref=e.get("ref") or "HEAD",
                tags=list(tags),
            )
            for url, e in zip(urls, entries, strict=True)
        ],
        ignore_conflicts=True,
        batch_size=2000,
    )
    by_url = {r.url: r for r in Repository.objects.filter(url__in=urls)}
    return [by_url[u] for u in urls]


def _runs_create(campaign: Campaign) -> int:
    """One pending run per matched repository, written in bulk; memory does not grow with the
    repository count (INSERT … SELECT on PostgreSQL, batches elsewhere)."""
    repos = campaign.spec["repos"]
    if isinstance(repos, dict) and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {RepoRun._meta.db_table} (
                    campaign_id, repository_id, ref, state, attempt, transient_retries, step,
                    base_commit, error, error_signature, error_summary, worker, created_at)
                SELECT %s, id, COALESCE(%s, default_ref), %s, 1, 0, '', '', '', '', '', '', now()
                FROM {Repository._meta.db_table} WHERE tags @> %s::jsonb ORDER BY id
                """,  # noqa: S608 - table names come from the models, values are parameters
                [campaign.pk, repos.get("ref"), RunState.PENDING, json.dumps([repos["tag"]])],
            )
            return cursor.rowcount
    if isinstance(repos, dict):
        ref = repos.get("ref")
        ids = _repos_by_tag(repos["tag"])
        pairs = Repository.objects.filter(pk__in=ids).values_list("pk", "default_ref")
        plan = ((pk, ref or default) for pk, default in pairs.order_by("pk").iterator(2000))
    else:
        registered = repositories_register(entries=repos)
        plan = (
            (r.pk, e.get("ref") or r.default_ref) for r, e in zip(registered, repos, strict=True)
        )
    total = 0
    while batch := list(itertools.islice(plan, 2000)):
        RepoRun.objects.bulk_create(
            [RepoRun(campaign_id=campaign.pk, repository_id=pk, ref=ref) for pk, ref in batch]
        )
        total += len(batch)
    return total


def campaign_launch(*, campaign: Campaign, actor) -> Campaign:
    """Create one run per repository (bulk) and start filling dispatch slots."""
    now = timezone.now()
    with transaction.atomic():
        moved = Campaign.objects.filter(pk=campaign.pk, state=CampaignState.DRAFT).update(
            state=CampaignState.RUNNING, launched_at=now, launched_by=actor, updated_at=now
        )
        if not moved:
            campaign.refresh_from_db()
            raise CampaignStateError(f"campaign is {campaign.state}; only drafts can be launched")
        count = _runs_create(campaign)
        if not count:
            raise CampaignStateError("the campaign matches no repositories")
        audit_record(
            action="campaign.campaign.launched",
            actor=actor,
            target=campaign,
            context={"campaign_id": campaign.pk},
            payload={"runs": count, "backend": campaign.backend},
            changes={"state": [CampaignState.DRAFT, CampaignState.RUNNING]},
        )
        transaction.on_commit(runs_dispatch)
    campaign.refresh_from_db()
    return campaign


def _live_sandboxes(**filters) -> QuerySet:
    from sandboxes.models import Sandbox, SandboxState

    return Sandbox.objects.filter(
        state__in=[SandboxState.CREATING, SandboxState.RUNNING], **filters
    )


def _sandboxes_terminate(*, reason: str, actor=None, **filters) -> int:
    from sandboxes.services import sandbox_terminate

    count = 0
    for sandbox in _live_sandboxes(**filters):
        try:
            sandbox_terminate(sandbox=sandbox, reason=reason, actor=actor)
            count += 1
        except Exception:
            logger.exception("could not terminate sandbox %s", sandbox.pk)
    return count


def campaign_cancel(*, campaign: Campaign, actor) -> Campaign:
    """Stop everything: queued work never starts, running sandboxes are terminated now."""
    now = timezone.now()
    with transaction.atomic():
        moved = Campaign.objects.filter(
            pk=campaign.pk, state__in=[CampaignState.DRAFT, CampaignState.RUNNING]
        ).update(state=CampaignState.CANCELLED, finished_at=now, updated_at=now)
        if not moved:
            campaign.refresh_from_db()
            raise CampaignStateError(f"campaign is already {campaign.state}")
        stopped = runs_transition(
            runs=RepoRun.objects.filter(campaign=campaign),
            from_states=[RunState.PENDING, RunState.QUEUED, RunState.RUNNING],
            to_state=RunState.CANCELLED,
            finished_at=now,
        )
        Variant.objects.filter(
            run__campaign=campaign, state__in=[VariantState.PENDING, VariantState.RUNNING]
        ).update(state=VariantState.CANCELLED, finished_at=now)
        audit_record(
            action="campaign.campaign.cancelled",
            actor=actor,
            target=campaign,
            context={"campaign_id": campaign.pk},
            payload={"runs_cancelled": len(stopped)},
            changes={"state": [campaign.state, CampaignState.CANCELLED]},
        )
        transaction.on_commit(
            lambda: _sandboxes_terminate(
                reason="campaign cancelled", actor=actor, campaign_id=campaign.pk
            )
        )
        transaction.on_commit(runs_dispatch)  # other campaigns may use the freed slots
    campaign.refresh_from_db()
    return campaign


def campaign_retry(*, campaign: Campaign, actor, signature: str | None = None) -> list[int]:
    """Put failed runs (all, or one error-signature cluster) back in line; return their ids."""
    if campaign.state not in (CampaignState.RUNNING, CampaignState.COMPLETED):
        raise CampaignStateError(f"campaign is {campaign.state}; cannot retry its runs")
    runs = RepoRun.objects.filter(campaign=campaign, state=RunState.FAILED)
    if signature:
        runs = runs.filter(error_signature=signature)
    with transaction.atomic():
        ids = runs_transition(
            runs=runs,
            from_states=[RunState.FAILED],
            to_state=RunState.PENDING,
            attempt=F("attempt") + 1,
            transient_retries=0,
            step="",
            snapshot_id=None,
            base_commit="",  # a retry takes the ref as it is now
            error="",
            error_signature="",
            error_summary="",
            worker="",
            heartbeat_at=None,
            queued_at=None,
            started_at=None,
            finished_at=None,
        )
        if not ids:
            return []
        Variant.objects.filter(run_id__in=ids).update(
            state=VariantState.PENDING,
            sandbox_id=None,
            patch=b"",
            patch_truncated=False,
            diff_sha256="",
            files_changed=0,
            insertions=0,
            deletions=0,
            diffstat=[],
            validation=Validation.NONE,
            output_tail="",
            error="",
            started_at=None,
            finished_at=None,
            duration_ms=None,
        )
        Campaign.objects.filter(pk=campaign.pk, state=CampaignState.COMPLETED).update(
            state=CampaignState.RUNNING, finished_at=None, updated_at=timezone.now()
        )
        for run_id in ids:
            audit_record(
                action="campaign.run.retried",
                actor=actor,
                target={"type": "campaigns.reporun", "id": run_id},
                context={"campaign_id": campaign.pk, "run_id": run_id},
                payload={"signature": signature or ""},
            )
        transaction.on_commit(runs_dispatch)
    return ids


# --- dispatch -------------------------------------------------------------------------------


def _dispatch_lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x636F6E766F79])  # "convoy"


def _enqueue(run_ids: list[int], *, countdown: float | None = None) -> None:
    from campaigns.tasks import run_execute_task

    for run_id in run_ids:
        run_execute_task.apply_async((run_id,), countdown=countdown)


def runs_dispatch() -> int:
    """Fill free slots (global cap and each campaign's max_parallel) with pending runs.

    Called at launch, whenever a run finishes, and by the periodic tick. Only as many tasks
    as there are free slots go to the broker, however many repositories a campaign has.
    """
    queued_total = 0
    with transaction.atomic():
        _dispatch_lock()
        active = dict(
            RepoRun.objects.filter(state__in=RUN_ACTIVE_STATES)
            .values_list("campaign_id")
            .annotate(n=Count("id"))
        )
        free_global = settings.MAX_PARALLEL_REPOS - sum(active.values())
        if free_global <= 0:
            return 0
        campaigns = Campaign.objects.filter(state=CampaignState.RUNNING).order_by(
            "launched_at", "id"
        )
        now = timezone.now()
        for cid, max_parallel in campaigns.values_list("pk", "max_parallel"):
            free = min(free_global, max_parallel - active.get(cid, 0))
            if free <= 0:
                continue
            pending = RepoRun.objects.filter(
                pk__in=list(
                    RepoRun.objects.filter(campaign_id=cid, state=RunState.PENDING)
                    .order_by("id")
                    .values_list("pk", flat=True)[:free]
                )
            )
            ids = runs_transition(
                runs=pending,
                from_states=[RunState.PENDING],
                to_state=RunState.QUEUED,
                queued_at=now,
            )
            if ids:
                transaction.on_commit(lambda ids=ids: _enqueue(ids))
                queued_total += len(ids)
                free_global -= len(ids)
            if free_global <= 0:
                break
    return queued_total


def _slot_handoff(*, campaign_id: int, worker: str) -> int | None:
    """Give the slot a finishing run frees to its campaign's next pending run, claimed for this
    worker (pending → queued → running); None if the campaign has none pending.

    Called in the transaction that moves the finishing run out of running, so the number of
    active runs never drops and rises again: no dispatcher can count the slot free in between.
    It is the run the dispatcher would pick (a campaign under its max_parallel keeps its slots,
    in id order), without a dispatch's lock and counts, and without a broker round trip: the
    same task carries it on. Should the worker die first, the run is running with a fresh
    heartbeat, and the tick requeues it once that lease runs out, as for any run.
    """
    next_ids = list(
        RepoRun.objects.filter(
            campaign_id=campaign_id,
            state=RunState.PENDING,
            campaign__state=CampaignState.RUNNING,
        )
        .order_by("id")
        .values_list("pk", flat=True)[:1]
    )
    if not next_ids:
        return None
    now = timezone.now()
    runs = RepoRun.objects.filter(pk__in=next_ids)
    if not runs_transition(
        runs=runs, from_states=[RunState.PENDING], to_state=RunState.QUEUED, queued_at=now
    ):
        return None
    runs_transition(
        runs=runs,
        from_states=[RunState.QUEUED],
        to_state=RunState.RUNNING,
        worker=worker,
        heartbeat_at=now,
        started_at=now,
    )
    return next_ids[0]


def campaign_finish_if_done(*, campaign_id: int) -> bool:
    """Mark a running campaign completed once every run is final."""
    if RepoRun.objects.filter(campaign_id=campaign_id).exclude(state__in=RUN_FINAL_STATES).exists():
        return False
    now = timezone.now()
    with transaction.atomic():
        moved = Campaign.objects.filter(pk=campaign_id, state=CampaignState.RUNNING).update(
            state=CampaignState.COMPLETED, finished_at=now, updated_at=now
        )
        if moved:
            campaign = Campaign.objects.get(pk=campaign_id)
            counts = dict(
                RepoRun.objects.filter(campaign_id=campaign_id)
                .values_list("state")
                .annotate(n=Count("id"))
            )
            audit_record(
                action="campaign.campaign.updated",
                actor_type="system",
                target=campaign,
                context={"campaign_id": campaign_id},
                changes={"state": [CampaignState.RUNNING, CampaignState.COMPLETED]},
                payload={"runs": counts},
            )
    return bool(moved)


_ticked_in_this_process = False


def campaigns_tick() -> dict:
    """Periodic housekeeping: requeue runs whose worker died, resend lost messages, dispatch,
    and complete finished campaigns."""
    global _ticked_in_this_process
    now = timezone.now()
    lease = timedelta(seconds=settings.RUN_LEASE_S)
    dead = Q(heartbeat_at__lt=now - lease)
    resend_before = now - lease * 4
    if settings.EMBEDDED and not _ticked_in_this_process:
        # One process holds the in-memory broker and the only worker: after a restart every
        # queued message is gone and every run another process held is orphaned.
        dead |= ~Q(worker=_worker_name())
        resend_before = now
    _ticked_in_this_process = True
    stale = runs_transition(
        runs=RepoRun.objects.filter(
            dead,
            state=RunState.RUNNING,
            campaign__state=CampaignState.RUNNING,
        ),
        from_states=[RunState.RUNNING],
        to_state=RunState.QUEUED,
        queued_at=now,
        worker="",
    )
    # A queued run whose message died with a worker: sending it again is harmless, because
    # only one task can move it from queued to running.
    lost = list(
        RepoRun.objects.filter(
            state=RunState.QUEUED,
            queued_at__lt=resend_before,
            campaign__state=CampaignState.RUNNING,
        ).values_list("pk", flat=True)[:1000]
    )
    if lost:
        RepoRun.objects.filter(pk__in=lost, state=RunState.QUEUED).update(queued_at=now)
    if stale or lost:
        logger.warning("requeueing %d stale and %d lost runs", len(stale), len(lost))
        _enqueue(stale + lost)
    dispatched = runs_dispatch()
    finished = [
        cid
        for cid in Campaign.objects.filter(state=CampaignState.RUNNING).values_list("pk", flat=True)
        if campaign_finish_if_done(campaign_id=cid)
    ]
    return {"stale": stale, "lost": lost, "dispatched": dispatched, "finished": finished}


# --- the pipeline ---------------------------------------------------------------------------


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Heartbeat(threading.Thread):
    """Keeps the run's lease fresh; notices when the run was cancelled or taken away."""

    def __init__(self, run_id: int, worker: str) -> None:
        super().__init__(daemon=True, name=f"run-{run_id}-heartbeat")
        self.run_id, self.worker = run_id, worker
        self.stop_event = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        interval = max(0.5, settings.RUN_LEASE_S / 3)
        try:
            while not self.stop_event.wait(interval):
                alive = RepoRun.objects.filter(
                    pk=self.run_id, state=RunState.RUNNING, worker=self.worker
                ).update(heartbeat_at=timezone.now())
                if not alive:
                    self.lost.set()
                    return
        except Exception:
            logger.exception("heartbeat for run %s failed", self.run_id)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


class _Context:
    """Everything one run's steps need, loaded once."""

    def __init__(self, run: RepoRun, heartbeat: _Heartbeat) -> None:
        from sandboxes.backends.base import NetworkPolicy, SandboxSpec
        from sandboxes.services import backend_get

        self.run = run
        self.campaign = run.campaign
        self.spec = self.campaign.spec
        self.heartbeat = heartbeat
        self.backend = backend_get(self.campaign.backend)
        limits = self.spec["limits"]
        self.sandbox_spec = SandboxSpec(
            cpu=limits["cpu"],
            memory_mb=limits["memory_mb"],
            timeout_s=limits["timeout_s"],
            network=NetworkPolicy(limits["network"]),
            # Read-only at /convoy/files/<name> ($CONVOY_FILES), outside the checkout and its diff.
            files={name: text.encode() for name, text in self.spec["files"].items()},
            labels={
                "convoy_campaign": str(self.campaign.pk),
                "convoy_run": str(run.pk),
            },
        )
        self.secrets = secret_values(names=self.spec["secrets"])
        self.launcher = self.campaign.launched_by or self.campaign.owner
        self._checked_at = -CHECK_EVERY_S  # the first check asks the database

    def check(self) -> None:
        """Stop if the run was cancelled or taken away. The database is asked at most every
        CHECK_EVERY_S: a cancel also terminates the run's sandboxes at once, so a step that
        started just before it stops anyway."""
        if self.heartbeat.lost.is_set():
            raise RunStopped("lease lost")
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY_S:
            return
        state = RepoRun.objects.filter(pk=self.run.pk).values_list("state", flat=True).first()
        if state != RunState.RUNNING:
            raise RunStopped(f"run is {state}")
        self._checked_at = now

    def owner(self, kind: str, pk: int) -> dict:
        return {
            "owner_kind": kind,
            "owner_id": pk,
            "campaign_id": self.campaign.pk,
            "run_id": self.run.pk,
            "on_behalf_of": self.launcher,
        }

    def redact(self, text: str) -> str:
        for name, value in self.secrets.items():
            if value:
                text = text.replace(value, f"[secret {name}]")
        return text


def _exec(
    ctx: _Context,
    sandbox,
    script: str,
    *,
    env=None,
    timeout_s=None,
    cap=None,
    argv=None,
    last=False,
):
    """Run a shell script in the sandbox's repository.

    Returns (command, output): the tail of both streams in order, or with `cap` every byte,
    as a (stdout, stderr) pair so that parsed stdout never mixes with stderr. `last`: the
    sandbox is terminated after this command (engines may run it as the sandbox itself).
    """
    from sandboxes.services import sandbox_exec

    keep_all = cap is not None
    chunks: deque[bytes] = deque()
    streams: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    size = [0]

    def on_output(event) -> None:
        if keep_all:
            streams.setdefault(event.stream, []).append(event.data)
            return
        chunks.append(event.data)
        size[0] += len(event.data)
        while size[0] - len(chunks[0]) > OUTPUT_TAIL_BYTES and len(chunks) > 1:
            size[0] -= len(chunks.popleft())

    command = sandbox_exec(
        sandbox=sandbox,
        argv=argv or ["bash", "-c", script],
        cwd=REPO_DIR,
        env={"HOME": "/tmp", **(env or {})},  # noqa: S108 - the sandbox's own tmpfs
        timeout_s=timeout_s or ctx.spec["limits"]["timeout_s"],
        output_cap=cap or 10 * 1024 * 1024,
        secrets=ctx.secrets or None,
        on_output=on_output,
        last=last,
    )
    if keep_all:
        return command, (b"".join(streams["stdout"]), b"".join(streams["stderr"]))
    return command, b"".join(chunks)


def _tail(ctx: _Context, data: bytes) -> str:
    return ctx.redact(data[-OUTPUT_TAIL_BYTES:].decode("utf-8", errors="replace"))


def _step_failure(label: str, step: dict, command, output: str) -> str:
    why = "timed out" if command.timed_out else f"exited with {command.exit_code}"
    return f"{label} `{step['run'][:200]}` {why}\n{output}".rstrip()


def _prepare(ctx: _Context, owner_kind: str, owner_id: int, *, variant_id: int | None = None):
    """A fresh sandbox (with the spec's files) with the repository checked out and setup done."""
    from sandboxes.repos import RepoUrlError, sandbox_repo_checkout
    from sandboxes.services import sandbox_create

    run = ctx.run
    sandbox = sandbox_create(
        spec=ctx.sandbox_spec,
        backend=ctx.backend.name,
        variant_id=variant_id,
        **ctx.owner(owner_kind, owner_id),
    )
    try:
        ctx.check()
        try:
            # Fetches the host-side mirror (once per attempt: its variants share a fetch made
            # since the run started; a retry fetches again), then clones the commit in.
            started = run.started_at
            commit = sandbox_repo_checkout(
                sandbox=sandbox,
                url=run.repository.url,
                ref=run.ref,
                fresh_after=started.timestamp() if started else None,
            )
        except RepoUrlError as exc:
            raise RunFailed(f"checkout of {run.ref} failed: {exc.message}") from None
        if run.base_commit and commit != run.base_commit:
            raise RunFailed(f"{run.ref} moved from {run.base_commit[:12]} to {commit[:12]}")
        if not run.base_commit:
            run.base_commit = commit
            step = "checked_out" if ctx.spec["setup"] else "prepared"
            RepoRun.objects.filter(pk=run.pk).update(base_commit=commit, step=step)
        for i, step in enumerate(ctx.spec["setup"]):
            ctx.check()
            command, out = _exec(ctx, sandbox, step["run"], timeout_s=step.get("timeout_s"))
            if command.exit_code != 0 or command.timed_out:
                raise RunFailed(_step_failure(f"setup[{i}]", step, command, _tail(ctx, out)))
    except BaseException:
        _terminate(sandbox, "preparation stopped")
        raise
    return sandbox


def _terminate(sandbox, reason: str) -> None:
    from sandboxes.services import sandbox_terminate

    try:
        sandbox_terminate(sandbox=sandbox, reason=reason)
    except Exception:
        logger.exception("could not terminate sandbox %s", sandbox.pk)


_NUMSTAT_RE = re.compile(r"^(-|\d+)\t(-|\d+)\t(.*)$")


class StepFailed(Exception):
    def __init__(self, command, output: bytes) -> None:
        super().__init__("step failed")
        self.command, self.output = command, output


def _transform_and_diff(
    ctx: _Context, sandbox, step: dict, env: dict, *, last: bool
) -> tuple[bytes, dict]:
    """Run the last transform step, then stage everything and read numstat and the binary-safe
    patch, in one sandbox command. The step's own script is the command's last argument, so the
    sandbox's command record shows it verbatim; it runs in a subshell of the wrapper (as
    `bash -c` would run it, without starting another bash), with no positional parameters.

    Returns (the step's output, diff fields); raises StepFailed if the step failed.
    """
    nonce = pysecrets.token_hex(8)
    done = f"--convoy-step-done-{nonce}--"
    base = ctx.run.base_commit
    git = "git -c safe.directory='*' -c core.hooksPath=/dev/null"
    # After the step, git's stderr goes to a file so warnings cannot mix into the patch bytes.
    # One `git diff` prints the numstat lines, an empty line, then the patch.
    wrapper = (
        '( __convoy_step=$1; set --; eval "$__convoy_step" ); status=$?; '
        "if [ $status -ne 0 ]; then exit $status; fi; "
        f"printf '\\n%s\\n' '{done}'; exec 2>/tmp/.convoy-git-stderr; "
        f"{{ {git} add -A . >/dev/null && "
        f"{git} diff --cached --numstat --binary -p --no-color --no-ext-diff --no-textconv "
        f"{base}; }} || {{ status=$?; cat /tmp/.convoy-git-stderr; exit $status; }}"
    )
    command, out = _exec(
        ctx,
        sandbox,
        step["run"],
        env=env,
        timeout_s=step.get("timeout_s"),
        cap=PATCH_CAP_BYTES + 8 * 1024 * 1024,
        argv=["bash", "-c", wrapper, "convoy-step", step["run"]],
        last=last,
    )
    stdout, stderr = out
    step_out, sep, rest = stdout.partition(f"\n{done}\n".encode())
    step_out += stderr
    if not sep:
        if command.truncated:
            raise RunFailed("the transform's output exceeded the cap before the diff was read")
        raise StepFailed(command, step_out)
    if command.exit_code != 0 and not command.truncated:
        raise RunFailed(f"could not read the diff: {_tail(ctx, rest)}")
    head, _, patch = rest.partition(b"\n\n")  # numstat lines are never empty
    diffstat, plus, minus = [], 0, 0
    for line in head.decode("utf-8", errors="replace").splitlines():
        match = _NUMSTAT_RE.match(line)
        if match:
            added = int(match[1]) if match[1] != "-" else 0
            deleted = int(match[2]) if match[2] != "-" else 0
            diffstat.append(
                {"path": match[3], "added": added, "deleted": deleted, "binary": match[1] == "-"}
            )
            plus, minus = plus + added, minus + deleted
    return step_out, {
        "patch": patch,
        "patch_truncated": bool(command.truncated),
        "diff_sha256": hashlib.sha256(patch).hexdigest() if patch else "",
        "diffstat": diffstat,
        "files_changed": len(diffstat),
        "insertions": plus,
        "deletions": minus,
    }


def _variant_run(ctx: _Context, variant: Variant, snapshot, sandbox=None) -> None:
    """Fork (or prepare), transform, capture the diff, validate. Runs at most once per claim."""
    from sandboxes.backends.base import SandboxError
    from sandboxes.services import sandbox_fork

    started = timezone.now()
    if not variant_transition(
        variant_id=variant.pk,
        from_state=VariantState.PENDING,
        to_state=VariantState.RUNNING,
        attempt=F("attempt") + 1,
        started_at=started,
        **({"sandbox_id": sandbox.pk} if sandbox is not None else {}),
    ):
        if sandbox is not None:
            _terminate(sandbox, "variant already handled")
        return
    spec_variant = next(v for v in ctx.spec["variants"] if v["name"] == variant.name)
    given = sandbox
    result: dict = {}
    try:
        try:
            if sandbox is None and snapshot is not None:
                sandbox = sandbox_fork(
                    snapshot=snapshot,
                    count=1,
                    spec=ctx.sandbox_spec,
                    variant_id=variant.pk,
                    **ctx.owner("variant", variant.pk),
                )[0]
            elif sandbox is None:
                sandbox = _prepare(ctx, "variant", variant.pk, variant_id=variant.pk)
            if given is None:
                Variant.objects.filter(pk=variant.pk).update(sandbox_id=sandbox.pk)
            env = {**spec_variant["env"], "CONVOY_VARIANT": variant.name}
            steps = spec_variant.get("transform") or ctx.spec["transform"]
            for i, step in enumerate(steps):
                ctx.check()
                try:
                    if i < len(steps) - 1:
                        command, out = _exec(
                            ctx, sandbox, step["run"], env=env, timeout_s=step.get("timeout_s")
                        )
                        if command.exit_code != 0 or command.timed_out:
                            raise StepFailed(command, out)
                    else:
                        last = not ctx.spec["validate"]  # else validation follows
                        out, diff = _transform_and_diff(ctx, sandbox, step, env, last=last)
                        result.update(diff)
                        result["output_tail"] = _tail(ctx, out)
                except StepFailed as failed:
                    result = {
                        "state": VariantState.FAILED,
                        "error": _step_failure(f"transform[{i}]", step, failed.command, ""),
                        "output_tail": _tail(ctx, failed.output),
                    }
                    break  # (not return: the variant's final transition below must run)
            else:  # every transform step succeeded: validate
                result["validation"] = Validation.SKIPPED
                validate = ctx.spec["validate"]
                for i, step in enumerate(validate):
                    ctx.check()
                    command, out = _exec(
                        ctx,
                        sandbox,
                        step["run"],
                        env=env,
                        timeout_s=step.get("timeout_s"),
                        last=i == len(validate) - 1,
                    )
                    result["output_tail"] = _tail(ctx, out)
                    if command.exit_code != 0 or command.timed_out:
                        result["validation"] = Validation.FAILED
                        result["error"] = _step_failure(f"validate[{i}]", step, command, "")
                        break
                    result["validation"] = Validation.PASSED
                result["state"] = VariantState.COMPLETED
        except RunFailed as exc:
            result = {"state": VariantState.FAILED, "error": str(exc)}
        except SandboxError as exc:
            if exc.transient:
                raise
            result = {"state": VariantState.FAILED, "error": f"sandbox error: {exc}"}
    finally:
        if sandbox is not None:
            _terminate(sandbox, "variant finished")
    if result:
        finished = timezone.now()
        with transaction.atomic():
            moved = variant_transition(
                variant_id=variant.pk,
                from_state=VariantState.RUNNING,
                to_state=result.pop("state"),
                finished_at=finished,
                duration_ms=int((finished - started).total_seconds() * 1000),
                **result,
            )
            if moved and "patch" in result:
                variant_diff_stored.send(
                    sender=Variant,
                    variant_id=variant.pk,
                    campaign_id=ctx.run.campaign_id,
                    patch=bytes(result["patch"]),
                    diff_sha256=result["diff_sha256"],
                )


def _variants_ensure(run: RepoRun) -> list[Variant]:
    """The run's variant rows, made on its first attempt's first claim."""
    wanted = [
        Variant(run=run, name=v["name"], position=i)
        for i, v in enumerate(run.campaign.spec["variants"])
    ]
    if run.attempt == 1 and not run.resumed:  # none can exist yet: the insert returns them
        with contextlib.suppress(IntegrityError), transaction.atomic():
            made = Variant.objects.bulk_create(wanted)
            if all(v.pk for v in made):
                return made
    Variant.objects.bulk_create(wanted, ignore_conflicts=True)
    return list(run.variants.order_by("position"))


def _run_pipeline(ctx: _Context) -> None:
    from sandboxes.backends.base import Capability
    from sandboxes.models import SandboxSnapshot
    from sandboxes.services import sandbox_snapshot

    run = ctx.run
    if run.resumed:
        # Anything a dead worker left running for this run is ours to clean up now: recorded
        # sandboxes, and engine sandboxes it made but never recorded as running.
        from sandboxes.services import sandboxes_orphans_terminate

        _sandboxes_terminate(reason="worker lost; run resumed", run_id=run.pk)
        sandboxes_orphans_terminate(
            backend=ctx.backend.name,
            labels={"convoy_run": str(run.pk)},
            reason="worker lost; run resumed",
        )
        Variant.objects.filter(run=run, state=VariantState.RUNNING).update(
            state=VariantState.PENDING
        )
    pending = [v for v in _variants_ensure(run) if v.state == VariantState.PENDING]
    if not pending:
        return
    can_snapshot = Capability.SNAPSHOT in ctx.backend.capabilities
    snapshot = None
    if run.snapshot_id and can_snapshot:
        snapshot = SandboxSnapshot.objects.filter(pk=run.snapshot_id, deleted_at=None).first()
    base = None
    if snapshot is None:
        ctx.check()
        if can_snapshot and len(pending) > 1:
            base = _prepare(ctx, "run", run.pk)
        else:  # no fork: this sandbox serves the first variant
            base = _prepare(ctx, "variant", pending[0].pk, variant_id=pending[0].pk)
        if ctx.spec["setup"]:
            RepoRun.objects.filter(pk=run.pk).update(step="prepared")
        if can_snapshot and len(pending) > 1:
            run.snapshotting = True  # from here a snapshot may exist before snapshot_id says so
            try:
                snapshot = sandbox_snapshot(sandbox=base, owner_kind="run", owner_id=run.pk)
            finally:
                _terminate(base, "snapshot taken")
            base = None
            run.snapshot_id = snapshot.pk
            RepoRun.objects.filter(pk=run.pk).update(snapshot_id=snapshot.pk, step="snapshotted")
    ctx.check()
    # Without a snapshot the prepared sandbox serves the first variant; the others get fresh
    # sandboxes with setup rerun.
    jobs = [(v, base if i == 0 else None) for i, v in enumerate(pending)]

    def one(job):
        try:
            _variant_run(ctx, job[0], snapshot, job[1])
        finally:
            connection.close()

    if len(jobs) == 1:
        _variant_run(ctx, jobs[0][0], snapshot, jobs[0][1])
        return
    with ThreadPoolExecutor(max_workers=min(len(jobs), VARIANT_THREADS)) as pool:
        futures = [pool.submit(one, job) for job in jobs]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]


def _run_claim(run_id: int, worker: str) -> RepoRun | None:
    """Move the run from queued to running for this worker; None if another got it first.

    The run comes back with `resumed` set when an earlier claim of this attempt may have left
    work behind (a worker died, or a transient error requeued it): only then does the pipeline
    look for leftover sandboxes and variants. A run never claimed has no heartbeat yet.
    """
    now = timezone.now()
    fields = {"worker": worker, "heartbeat_at": now, "started_at": now}
    claim = {"from_states": [RunState.QUEUED], "to_state": RunState.RUNNING, **fields}
    resumed = False
    if not runs_transition(
        runs=RepoRun.objects.filter(pk=run_id, heartbeat_at__isnull=True), **claim
    ):
        resumed = True
        if not runs_transition(runs=RepoRun.objects.filter(pk=run_id), **claim):
            return None
    return _run_load(run_id, resumed=resumed)


def _run_load(run_id: int, *, resumed: bool) -> RepoRun:
    run = (
        RepoRun.objects.select_related("repository")
        .annotate(campaign_launched_at=F("campaign__launched_at"))
        .get(pk=run_id)
    )
    run.campaign = _campaign_launched(run.campaign_id, run.campaign_launched_at)
    run.resumed = resumed  # an earlier claim of this attempt may have left work behind
    run.snapshotting = False  # set once this claim starts a snapshot
    return run


_launched: dict[tuple, tuple[float, Campaign]] = {}
LAUNCHED_CACHE_S = 300.0


def _campaign_launched(campaign_id: int, launched_at) -> Campaign:
    """The campaign as its runs need it (spec, backend, owner and launcher), cached for a few
    minutes per worker process under its id and launch time: a launched campaign's spec never
    changes (only drafts can be edited), and a large spec (its `files:`) would otherwise be read
    and decoded per run. Its state is not to be read from here: runs check their own."""
    now = time.monotonic()
    key = (campaign_id, launched_at)
    hit = _launched.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    campaign = Campaign.objects.select_related("launched_by", "owner").get(pk=campaign_id)
    for old in [k for k, (until, _) in _launched.items() if until <= now]:
        _launched.pop(old, None)
    if campaign.launched_at is not None and campaign.launched_at == launched_at:
        _launched[key] = (now + LAUNCHED_CACHE_S, campaign)
    return campaign


def _run_fail(run: RepoRun, message: str, launcher, worker: str) -> int | None:
    """Fail the run; the id of the campaign's next run if its slot went to it (see
    _slot_handoff)."""
    signature, summary = error_signature(message)
    with transaction.atomic():
        if run_transition(
            run_id=run.pk,
            from_state=RunState.RUNNING,
            to_state=RunState.FAILED,
            error=message[-20_000:],
            error_signature=signature,
            error_summary=summary,
            finished_at=timezone.now(),
        ):
            Variant.objects.filter(
                run=run, state__in=[VariantState.PENDING, VariantState.RUNNING]
            ).update(state=VariantState.CANCELLED, finished_at=timezone.now())
            audit_record(
                action="campaign.run.failed",
                actor_type="agent",
                on_behalf_of=launcher,
                target=run,
                outcome="failure",
                context={"campaign_id": run.campaign_id, "run_id": run.pk},
                payload={"signature": signature, "summary": summary},
            )
            return _slot_handoff(campaign_id=run.campaign_id, worker=worker)
    return None


def _run_cleanup(run: RepoRun) -> None:
    from sandboxes.models import SandboxSnapshot
    from sandboxes.services import snapshot_delete

    _sandboxes_terminate(reason="run finished", run_id=run.pk)
    if not (run.snapshot_id or run.resumed or run.snapshotting):
        return  # this claim made no snapshot, and no earlier one of this attempt ran
    state = RepoRun.objects.filter(pk=run.pk).values_list("state", flat=True).first()
    if state in RUN_FINAL_STATES:
        for snapshot in SandboxSnapshot.objects.filter(
            owner_kind="run", owner_id=run.pk, deleted_at=None
        ):
            try:
                snapshot_delete(snapshot=snapshot)
            except Exception:
                logger.exception("could not delete snapshot %s", snapshot.pk)


def run_execute(*, run_id: int) -> str:
    """Carry one queued run through its remaining steps; return how it ended. Safe to call
    twice: the second call finds the run claimed (or final) and returns.

    A run that ends with its campaign's next run pending hands its slot on (`_slot_handoff`),
    and this call carries that run too, and so on, as long as its campaign has pending runs.
    """
    worker = _worker_name()
    run = _run_claim(run_id, worker)
    if run is None:
        return "not queued"
    outcome, next_id = _run_carry(run, worker)
    while next_id is not None:
        _, next_id = _run_carry(_run_load(next_id, resumed=False), worker)
    return outcome


def _run_carry(run: RepoRun, worker: str) -> tuple[str, int | None]:
    """One claimed run, start to end: (how it ended, the run it handed its slot to)."""
    from sandboxes.backends.base import SandboxError

    heartbeat = _Heartbeat(run.pk, worker)
    heartbeat.start()
    launcher = run.campaign.launched_by or run.campaign.owner
    outcome = "succeeded"
    next_id = None  # the campaign's next run, which the freed slot went to
    try:
        ctx = _Context(run, heartbeat)
        _run_pipeline(ctx)
        with transaction.atomic():
            if run_transition(
                run_id=run.pk,
                from_state=RunState.RUNNING,
                to_state=RunState.SUCCEEDED,
                finished_at=timezone.now(),
                step="done",
            ):
                next_id = _slot_handoff(campaign_id=run.campaign_id, worker=worker)
    except RunStopped as exc:
        outcome = f"stopped: {exc}"
    except RunFailed as exc:
        outcome = "failed"
        next_id = _run_fail(run, str(exc), launcher, worker)
    except SandboxError as exc:
        if exc.transient and run.transient_retries < MAX_TRANSIENT_RETRIES:
            outcome = "requeued"
            delay = min(60, 2 ** (run.transient_retries + 1))
            if run_transition(
                run_id=run.pk,
                from_state=RunState.RUNNING,
                to_state=RunState.QUEUED,
                transient_retries=F("transient_retries") + 1,
                queued_at=timezone.now() + timedelta(seconds=delay),
                worker="",
            ):
                logger.warning(
                    "run %s: transient sandbox error, retry in %ss: %s", run.pk, delay, exc
                )
                _enqueue([run.pk], countdown=delay)
        else:
            outcome = "failed"
            next_id = _run_fail(run, f"sandbox error: {exc}", launcher, worker)
    except Exception as exc:
        logger.exception("run %s failed unexpectedly", run.pk)
        outcome = "failed"
        message = f"internal error: {type(exc).__name__}: {exc}"
        next_id = _run_fail(run, message, launcher, worker)
    finally:
        heartbeat.stop()
        _run_cleanup(run)
    if outcome != "requeued" and next_id is None:
        campaign_finish_if_done(campaign_id=run.campaign_id)
        runs_dispatch()
    return outcome, next_id
