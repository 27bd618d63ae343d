"""Campaign verbs: create, update (drafts and finished previews), launch (also after a
preview: the sample's runs are kept), cancel, retry, and repository registration.

Each takes the acting user as `actor`, refuses with core errors (`CampaignStateError` is a
409 Conflict, `CampaignSpecError` a 422 Invalid with field paths), writes its audit event in the
same transaction and queues work on commit. Running the runs is `campaigns.pipeline`'s job,
filling slots `campaigns.dispatch`'s.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Iterable

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from accounts.roles import ADMIN, user_role
from agents.spec import model_ceiling_errors
from audit.record import audit_record
from campaigns.dispatch import runs_dispatch
from campaigns.models import (
    RUN_FINAL_STATES,
    Campaign,
    CampaignState,
    RepoRun,
    Repository,
    RepositoryTag,
    RunState,
    Secret,
    Validation,
    Variant,
    VariantState,
)
from campaigns.secret_grants import secret_names_granted
from campaigns.selectors import repository_ids_by_tag
from campaigns.spec import (
    CampaignSpecError,
    FieldError,
    ParsedSpec,
    spec_dump,
    spec_parse,
    spec_validate,
)
from campaigns.spec_check import author_split
from campaigns.states import CampaignStateError, runs_transition
from core.errors import Conflict, Invalid, PermissionDenied
from sandboxes.models import Sandbox, SandboxState
from sandboxes.repos import repo_url_validate
from sandboxes.services import sandbox_terminate

logger = logging.getLogger(__name__)

TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _spec_from(*, source: str | bytes | None, data: dict | None) -> ParsedSpec:
    if source is not None:
        return spec_parse(source)
    return ParsedSpec(data=spec_validate(data), lines={}, source="")


def spec_db_check(
    parsed: ParsedSpec,
    *,
    exclude_pk: int | None = None,
    owner_id: int | None = None,
    editor=None,
) -> None:
    """Checks that need the database. With `owner_id`, each secret must also be granted to the
    campaign (`exclude_pk`) or to its owner (without it, the form's early check, only that it
    is stored). A grant counts only when `editor` (who saves the spec) is the owner or an
    admin: any manager may edit a campaign, but not hand the secrets granted to it, or to its
    owner, to code they wrote. A manager is told the same for a name that is not stored as for
    one not granted, so the names of stored secrets stay an admin's to know."""
    errors = []
    spec = parsed.data
    if Campaign.objects.filter(name=spec["name"]).exclude(pk=exclude_pk).exists():
        errors.append(
            FieldError(
                "name", f"a campaign named {spec['name']!r} exists", parsed.lines.get("name")
            )
        )
    # Every secret the spec names: those its commands get, and the image registry's login
    # (which the host sends to the registry the spec names: the same grant rules).
    named = [(f"secrets[{i}]", name) for i, name in enumerate(spec["secrets"])]
    image = spec.get("image")
    if isinstance(image, dict) and image.get("credentials_secret"):
        named.append(("image.credentials_secret", image["credentials_secret"]))
    names = {name for _, name in named}
    admin = editor is not None and user_role(editor) == ADMIN
    stored = set(Secret.objects.filter(name__in=names).values_list("name", flat=True))
    granted, held = stored, set()
    if owner_id:
        trusted = admin or (editor is not None and editor.pk == owner_id)
        held = secret_names_granted(campaign_id=exclude_pk, owner_id=owner_id)
        granted = held if trusted else set()
    for path, name in named:
        if name in granted:
            continue
        if name in held:
            message = (
                f"the secret {name!r} is granted to this campaign or its owner: only the "
                "campaign's owner or an admin may save a spec that names it"
            )
        elif name not in stored and (admin or not owner_id):
            message = f"no stored secret named {name!r}"
        else:
            message = f"the secret {name!r} is not granted to this campaign (ask an admin)"
        errors.append(FieldError(path, message, parsed.lines.get(path)))
    problem = _author_problem(spec, campaign_pk=exclude_pk, editor=editor)
    if problem:
        line = parsed.lines.get("changeset.author")
        errors.append(FieldError("changeset.author", problem, line))
    if isinstance(spec["repos"], dict) and not repository_ids_by_tag(spec["repos"]["tag"]):
        errors.append(
            FieldError(
                "repos.tag",
                f"no registered repository has the tag {spec['repos']['tag']!r}",
                parsed.lines.get("repos.tag"),
            )
        )
    if errors:
        raise CampaignSpecError(errors)


def _author_problem(spec: dict, *, campaign_pk: int | None, editor) -> str | None:
    """Why `editor` may not save this spec's `changeset.author`, or None.

    The code host attributes the published commit to whoever the author names, so a manager
    names themselves (their account's email) or the installation's bot identity; an admin may
    name anyone. An author kept as the campaign stored it stays: it was checked when its editor
    set it (an admin's choice survives a manager's later edit).
    """
    author = (spec.get("changeset") or {}).get("author")
    if not author or editor is None or user_role(editor) == ADMIN:
        return None
    named = author_split(author)
    if named is None:  # spec_validate refused it already
        return None
    bot = author_split(settings.PUBLISH_AUTHOR)
    allowed = {email.lower() for email in (editor.email, bot[1] if bot else "") if email}
    if named[1].lower() in allowed:
        return None
    if campaign_pk is not None:
        stored = Campaign.objects.filter(pk=campaign_pk).values_list("spec", flat=True).first()
        if stored and (stored.get("changeset") or {}).get("author") == author:
            return None
    own = f"<{editor.email}>" if editor.email else "(your account has no email)"
    return (
        f"the author's email must be your own {own} or the installation's bot identity "
        f"({settings.PUBLISH_AUTHOR}): the code host credits the commit to whoever it names; "
        "an admin may name someone else"
    )


def campaign_spec_check(
    *, source: str | bytes, exclude_pk: int | None = None, owner_id: int | None = None, editor=None
) -> ParsedSpec:
    """The spec parsed and checked as create/update would check it, without saving anything
    (forms use it to show every problem beside the field)."""
    parsed = spec_parse(source)
    spec_db_check(parsed, exclude_pk=exclude_pk, owner_id=owner_id, editor=editor)
    return parsed


def campaign_fields(spec: dict) -> dict:
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
    spec_db_check(parsed, owner_id=actor.pk, editor=actor)
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: the name was free when checked above
                campaign = Campaign.objects.create(
                    **campaign_fields(parsed.data), spec_source=parsed.source, owner=actor
                )
        except IntegrityError:
            if not Campaign.objects.filter(name=parsed.data["name"]).exists():
                raise
            name = parsed.data["name"]
            raise CampaignSpecError(
                [FieldError("name", f"a campaign named {name!r} exists", parsed.lines.get("name"))]
            ) from None
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
    """Replace a draft campaign's spec. A campaign whose preview has finished goes back to
    draft with a changed spec: its preview runs were made with the old one and are deleted."""
    parsed = _spec_from(source=source, data=data)
    spec_db_check(parsed, exclude_pk=campaign.pk, owner_id=campaign.owner_id, editor=actor)
    fields = campaign_fields(parsed.data)
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.state not in (CampaignState.DRAFT, CampaignState.PREVIEWING):
            raise CampaignStateError(
                f"campaign is {locked.state}; apply the spec as a new revision instead"
            )
        if locked.state == CampaignState.PREVIEWING:
            if locked.spec == parsed.data:
                return locked  # the same spec: the preview still shows what it would do
            previews = RepoRun.objects.filter(campaign=locked)
            if previews.exclude(state__in=RUN_FINAL_STATES).exists():
                raise CampaignStateError("the preview is still running; wait or cancel it")
            previews.delete()
            locked.state = CampaignState.DRAFT
        changes = {
            k: [getattr(locked, k), v]
            for k, v in fields.items()
            if k != "spec" and getattr(locked, k) != v
        }
        payload = {}
        if locked.spec != parsed.data:
            # What changed, line by line: a draft keeps no revisions, and any manager may edit
            # one (the trail must show who put which command in).
            before = locked.spec_source or spec_dump(locked.spec)
            after = parsed.source or spec_dump(parsed.data)
            changes["spec"] = [_sha256(before), _sha256(after)]
            payload["spec_diff"] = "".join(
                difflib.unified_diff(
                    before.splitlines(keepends=True),
                    after.splitlines(keepends=True),
                    "before",
                    "after",
                )
            )
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
            payload=payload,
        )
    return locked


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _repo_name(url: str) -> str:
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return (tail[:-4] if tail.endswith(".git") else tail) or url[-200:]


def repositories_register(
    *, entries: list[dict], actor, tags: Iterable[str] = ()
) -> list[Repository]:
    """Register repositories by URL (idempotent); new ones get `tags`. The URLs it added are
    one `campaign.repository.registered` event (`actor` None: the demo seed, a benchmark)."""
    urls = [repo_url_validate(e["url"]) for e in entries]
    for entry in entries:
        if str(entry.get("ref") or "").startswith("-"):  # git would read it as an option
            raise Invalid("ref: must not start with '-'", field="ref")
    tags = _tag_names_validate(tags)
    with transaction.atomic():
        known = set(Repository.objects.filter(url__in=urls).values_list("url", flat=True))
        created = _tags_claim(tags, actor=actor) if set(urls) - known else []
        inserted = _repositories_insert(
            [
                Repository(
                    url=url,
                    name=_repo_name(url),
                    default_ref=e.get("ref") or "HEAD",
                    tags=list(tags),
                )
                for url, e in zip(urls, entries, strict=True)
                if url not in known
            ]
        )
        by_url = {r.url: r for r in Repository.objects.filter(url__in=urls)}
        # What this call inserted, not what it did not see: a registration at the same moment
        # inserted the others, and wrote their event.
        added = list(dict.fromkeys(u for u in urls if u in inserted))
        if added:
            audit_record(
                action="campaign.repository.registered",
                actor=actor,
                payload={"urls": added, "tags": sorted(tags), "tags_created": created},
            )
    return [by_url[u] for u in urls]


def _repositories_insert(repos: list[Repository]) -> set[str]:
    """Insert the rows whose URL is not stored yet (ON CONFLICT DO NOTHING: a registration at
    the same moment may store some first); the URLs this insert stored, from RETURNING
    (PostgreSQL and SQLite both have it; bulk_create's ignore_conflicts does not say)."""
    if not repos:
        return set()
    now = timezone.now()
    columns = ("url", "name", "default_ref", "tags", "created_at")
    fields = [Repository._meta.get_field(c) for c in columns]
    quote = connection.ops.quote_name
    inserted: set[str] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(repos), 1000):
            batch = repos[start : start + 1000]
            params = []
            for repo in batch:
                repo.created_at = now
                params += [f.get_db_prep_save(getattr(repo, f.attname), connection) for f in fields]
            row = "(" + ", ".join(["%s"] * len(fields)) + ")"
            cursor.execute(
                f"INSERT INTO {quote(Repository._meta.db_table)} "  # noqa: S608 - names from the model
                f"({', '.join(quote(f.column) for f in fields)}) "
                f"VALUES {', '.join([row] * len(batch))} "
                f"ON CONFLICT ({quote('url')}) DO NOTHING RETURNING {quote('url')}",
                params,
            )
            inserted.update(url for (url,) in cursor.fetchall())
    return inserted


def _tag_names_validate(tags: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(tags))
    for i, name in enumerate(names):
        if not isinstance(name, str) or not TAG_NAME.fullmatch(name):
            raise Invalid(
                "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
                field=f"tags[{i}]",
            )
    return names


def _tags_claim(tags: list[str], *, actor) -> list[str]:
    """Refuse tags someone else owns (admins may add anywhere); create the new ones, owned by
    `actor` (None: the seed or a benchmark, admins only afterwards). The names it created."""
    admin = actor is not None and user_role(actor) == ADMIN
    existing = RepositoryTag.objects.select_for_update().filter(name__in=tags)
    for tag in existing:
        if actor is not None and not admin and tag.owner_id != actor.pk:
            owner = tag.owner.get_username() if tag.owner_id else "an admin"
            raise PermissionDenied(
                f"Tag {tag.name!r} is {owner}'s: only they or an admin add repositories to it "
                "(a campaign that selects it runs their code with its secrets).",
                field=f"tags[{tags.index(tag.name)}]",
            )
    taken = {t.name for t in existing}
    created = [t for t in tags if t not in taken]
    RepositoryTag.objects.bulk_create(
        [RepositoryTag(name=t, owner=actor) for t in created], ignore_conflicts=True
    )
    if len(created) != RepositoryTag.objects.filter(name__in=created, owner=actor).count():
        raise Conflict("A tag was created by someone else at the same time; try again.")
    return created


def runs_create(campaign: Campaign, *, actor) -> int:
    """One pending run per matched repository that has none yet (a preview's or an earlier
    revision's runs are kept), written in bulk; memory does not grow with the repository count
    (INSERT … SELECT on PostgreSQL, batches elsewhere). Returns the runs added."""
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
                ON CONFLICT (campaign_id, repository_id) DO NOTHING
                """,  # noqa: S608 - table names come from the models, values are parameters
                [campaign.pk, repos.get("ref"), RunState.PENDING, json.dumps([repos["tag"]])],
            )
            return cursor.rowcount
    if isinstance(repos, dict):
        ref = repos.get("ref")
        ids = repository_ids_by_tag(repos["tag"])
        pairs = Repository.objects.filter(pk__in=ids).values_list("pk", "default_ref")
        plan = ((pk, ref or default) for pk, default in pairs.order_by("pk").iterator(2000))
    else:
        registered = repositories_register(entries=repos, actor=actor)
        plan = (
            (r.pk, e.get("ref") or r.default_ref) for r, e in zip(registered, repos, strict=True)
        )
    total = 0
    while batch := list(itertools.islice(plan, 2000)):
        have = set(
            RepoRun.objects.filter(
                campaign_id=campaign.pk, repository_id__in=[pk for pk, _ in batch]
            ).values_list("repository_id", flat=True)
        )
        RepoRun.objects.bulk_create(
            [
                RepoRun(campaign_id=campaign.pk, repository_id=pk, ref=ref)
                for pk, ref in batch
                if pk not in have
            ]
        )
        total += len(batch) - len(have)
    return total


def spec_ceilings_check(spec: dict) -> None:
    """Refuse (422 naming the field) a saved spec whose model budgets are now above their
    provider's ceilings: an admin lowered one after the spec was checked."""
    errors = model_ceiling_errors(spec)
    if errors:
        raise CampaignSpecError([FieldError(where, message) for where, message in errors])


def campaign_launch(*, campaign: Campaign, actor) -> Campaign:
    """Create one run per repository (bulk) and start filling dispatch slots. After a preview
    only the rest are added: the sample's runs and results are kept."""
    spec_ceilings_check(campaign.spec)
    now = timezone.now()
    with transaction.atomic():
        moved = Campaign.objects.filter(
            pk=campaign.pk, state__in=[CampaignState.DRAFT, CampaignState.PREVIEWING]
        ).update(state=CampaignState.RUNNING, launched_at=now, launched_by=actor, updated_at=now)
        if not moved:
            campaign.refresh_from_db()
            raise CampaignStateError(f"campaign is {campaign.state}; only drafts can be launched")
        previewed = RepoRun.objects.filter(campaign=campaign).count()
        count = runs_create(campaign, actor=actor) + previewed
        if not count:
            raise CampaignStateError("the campaign matches no repositories")
        audit_record(
            action="campaign.campaign.launched",
            actor=actor,
            target=campaign,
            context={"campaign_id": campaign.pk},
            payload={"runs": count, "previewed": previewed, "backend": campaign.backend},
            changes={"state": [campaign.state, CampaignState.RUNNING]},
        )
        transaction.on_commit(runs_dispatch)
    campaign.refresh_from_db()
    return campaign


def _live_sandboxes(**filters) -> QuerySet:
    return Sandbox.objects.filter(
        state__in=[SandboxState.CREATING, SandboxState.RUNNING], **filters
    )


def sandboxes_terminate_live(*, reason: str, actor=None, skip=frozenset(), **filters) -> int:
    """Terminate the live sandboxes matching `filters`, but those whose id is in `skip`."""
    count = 0
    live = _live_sandboxes(**filters)
    for sandbox in live.exclude(pk__in=skip) if skip else live:
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
            pk=campaign.pk,
            state__in=[CampaignState.DRAFT, CampaignState.PREVIEWING, CampaignState.RUNNING],
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
            lambda: sandboxes_terminate_live(
                reason="campaign cancelled", actor=actor, campaign_id=campaign.pk
            )
        )
        transaction.on_commit(runs_dispatch)  # other campaigns may use the freed slots
    campaign.refresh_from_db()
    return campaign


def campaign_retry(*, campaign: Campaign, actor, signature: str | None = None) -> list[int]:
    """Put failed runs (all, or one error-signature cluster) back in line; return their ids."""
    runs = RepoRun.objects.filter(campaign=campaign, state=RunState.FAILED)
    if signature:
        runs = runs.filter(error_signature=signature)
    with transaction.atomic():
        # The state as it is now, held until the runs move: a cancel committed since the caller
        # loaded the campaign left failed runs pending for good in a cancelled campaign.
        state = (
            Campaign.objects.select_for_update().values_list("state", flat=True).get(pk=campaign.pk)
        )
        if state not in (CampaignState.RUNNING, CampaignState.COMPLETED):
            raise CampaignStateError(f"campaign is {state}; cannot retry its runs")
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
