"""Edit and re-apply: a launched campaign's spec changes as numbered revisions.

`revision_plan` says what applying a new spec would do (the spec diff, new repositories, the
variants whose steps changed, how many runs re-run) without changing anything; pages and the
command line show it before the manager confirms. `campaign_revise` applies it: it stores the
revision, adds runs for new repositories, and re-runs only what the change affects: every
variant when something they all share changed (setup, files, limits, backend, secrets…),
otherwise only the variants whose own steps or environment changed. Decisions stay bound to
each variant's diff hash (review), so a decision whose diff comes out the same still holds.
"""

from __future__ import annotations

import difflib

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.record import audit_record
from campaigns.dispatch import runs_dispatch
from campaigns.models import (
    Campaign,
    CampaignRevision,
    CampaignState,
    RepoRun,
    Repository,
    RunState,
    Validation,
    Variant,
    VariantState,
)
from campaigns.selectors import campaign_is_author, repository_ids_by_tag
from campaigns.services import (
    campaign_fields,
    runs_create,
    sandboxes_terminate_live,
    spec_db_check,
)
from campaigns.spec import CampaignSpecError, FieldError, spec_dump, spec_parse
from campaigns.states import CampaignStateError, runs_transition
from sandboxes.repos import repo_url_validate

# Spec keys whose change alters nothing a sandbox runs: they never cause a re-run.
NO_RERUN_KEYS = {"name", "description", "repos", "changeset", "review", "max_parallel"}
# Keys judged per variant (a variant may override `transform`).
PER_VARIANT_KEYS = {"variants", "transform", "validate"}

VARIANT_RESET = {
    "state": VariantState.PENDING,
    "sandbox_id": None,
    "patch": b"",
    "patch_truncated": False,
    "diff_sha256": "",
    "files_changed": 0,
    "insertions": 0,
    "deletions": 0,
    "diffstat": [],
    "validation": Validation.NONE,
    "output_tail": "",
    "error": "",
    "started_at": None,
    "finished_at": None,
    "duration_ms": None,
}


def revision_source(campaign: Campaign) -> str:
    """The campaign's spec as text (as submitted, else dumped from the stored spec)."""
    return campaign.spec_source or spec_dump(campaign.spec)


def _matched_repository_ids(spec: dict) -> tuple[set[int], list[str]]:
    """Registered repositories the spec names, and URLs it names that are not registered."""
    repos = spec["repos"]
    if isinstance(repos, dict):
        return set(repository_ids_by_tag(repos["tag"])), []
    urls = [repo_url_validate(e["url"]) for e in repos]
    known = dict(Repository.objects.filter(url__in=urls).values_list("url", "pk"))
    return set(known.values()), [u for u in urls if u not in known]


def _variant_changes(old: dict, new: dict) -> tuple[list[str], list[str], list[str]]:
    """(changed, added, removed) variant names."""
    before = {v["name"]: v for v in old["variants"]}
    after = {v["name"]: v for v in new["variants"]}
    shared_changed = old.get("validate") != new.get("validate")
    changed = []
    for name, variant in after.items():
        if name not in before:
            continue
        uses_top = "transform" not in variant or "transform" not in before[name]
        if (
            variant != before[name]
            or shared_changed
            or (uses_top and old.get("transform") != new.get("transform"))
        ):
            changed.append(name)
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    return changed, added, removed


def revision_plan(*, campaign: Campaign, source: str | bytes, actor) -> dict:
    """What applying `source` to a launched campaign would change (`actor` applying it);
    nothing is written."""
    parsed = spec_parse(source)
    spec_db_check(parsed, exclude_pk=campaign.pk, owner_id=campaign.owner_id, editor=actor)
    new, old = parsed.data, campaign.spec
    if new["name"] != campaign.name:
        raise CampaignSpecError(
            [FieldError("name", "a revision keeps the campaign's name", parsed.lines.get("name"))]
        )
    shared = sorted(
        k
        for k in set(old) | set(new)
        if k not in NO_RERUN_KEYS | PER_VARIANT_KEYS and old.get(k) != new.get(k)
    )
    changed, added, removed = _variant_changes(old, new)
    matched, unregistered = _matched_repository_ids(new)
    have = set(RepoRun.objects.filter(campaign=campaign).values_list("repository_id", flat=True))
    new_repos = sorted(
        Repository.objects.filter(pk__in=matched - have).values_list("name", flat=True)
    )
    removed_repos = sorted(
        Repository.objects.filter(pk__in=have - matched).values_list("name", flat=True)
    )
    affected = _affected_runs(campaign, rerun_all=bool(shared), variants=changed + added)
    diff = "".join(
        difflib.unified_diff(
            revision_source(campaign).splitlines(keepends=True),
            parsed.source.splitlines(keepends=True),
            f"revision {_current_number(campaign)}",
            "new spec",
        )
    )
    return {
        "spec_diff": diff,
        "unchanged": not diff and not new_repos and not unregistered,
        "rerun_all": bool(shared),
        "shared_changes": shared,
        "changed_variants": changed if not shared else sorted(v["name"] for v in new["variants"]),
        "added_variants": added,
        "removed_variants": removed,
        "new_repositories": new_repos + unregistered,
        "removed_repositories": removed_repos,
        "runs_to_rerun": affected.count(),
        "source": parsed.source,
    }


def _affected_runs(campaign: Campaign, *, rerun_all: bool, variants: list[str]):
    """Runs that re-run: every final or running one when shared steps changed, else those that
    finished with a variant that changed or is new (a run that failed in setup is unaffected
    by a variant's change)."""
    runs = RepoRun.objects.filter(campaign=campaign)
    if rerun_all:
        return runs.filter(state__in=[RunState.SUCCEEDED, RunState.FAILED, RunState.RUNNING])
    if not variants:
        return runs.none()
    return runs.filter(
        Q(state=RunState.SUCCEEDED) | Q(state=RunState.RUNNING),
    )


def _current_number(campaign: Campaign) -> int:
    last = campaign.revisions.order_by("-number").values_list("number", flat=True).first()
    return last or 1


def _launched_with_four_eyes(campaign: Campaign) -> bool:
    """Whether the spec the campaign was launched with kept the four-eyes rule (revision 1,
    or the spec itself while it has no revisions)."""
    first = campaign.revisions.filter(number=1).values_list("spec", flat=True).first()
    spec = first if first is not None else campaign.spec
    return bool(((spec or {}).get("review") or {}).get("four_eyes", True))


def _four_eyes_waiver_check(*, campaign: Campaign, actor, new: dict, plan: dict) -> None:
    """A waiver of the four-eyes rule covers the changes that exist when it is given, by
    someone who made none of them. So a revision that turns the rule off comes from someone
    who did not write or start the campaign and changes nothing its sandboxes run (else one
    revision brings new commands and the waiver for them, and its author approves their
    output); and on a campaign launched with the rule, a revision that changes what runs
    turns it back on (else, once someone waived it, an author adds commands and approves
    them)."""
    if new["review"]["four_eyes"]:
        return
    reruns = bool(
        plan["rerun_all"]
        or plan["changed_variants"]
        or plan["added_variants"]
        or plan["new_repositories"]
    )
    if campaign.four_eyes and campaign_is_author(campaign=campaign, user=actor):
        # Else the launcher turns the rule off (nothing re-runs) and approves their own diffs.
        message = (
            "only someone who did not write or start this campaign may turn the "
            "four-eyes rule off for the changes it made"
        )
    elif campaign.four_eyes and reruns:
        message = (
            "turning the four-eyes rule off must be a revision of its own: this one also "
            "changes what the sandboxes run"
        )
    elif reruns and _launched_with_four_eyes(campaign):
        message = (
            "this revision changes what the sandboxes run: the campaign was launched with the "
            "four-eyes rule, which the waiver covered only for the changes made before it; "
            "set review.four_eyes: true"
        )
    else:
        return
    raise CampaignSpecError([FieldError("review.four_eyes", message)])


def campaign_revise(*, campaign: Campaign, actor, source: str | bytes) -> CampaignRevision:
    """Apply an edited spec to a running or finished campaign as its next revision."""
    plan = revision_plan(campaign=campaign, source=source, actor=actor)
    if plan["unchanged"]:
        raise CampaignStateError("the spec is unchanged; there is nothing to apply")
    new = spec_parse(source).data
    _four_eyes_waiver_check(campaign=campaign, actor=actor, new=new, plan=plan)
    now = timezone.now()
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.state not in (CampaignState.RUNNING, CampaignState.COMPLETED):
            raise CampaignStateError(
                f"campaign is {locked.state}; only running or finished campaigns take revisions"
            )
        if not locked.revisions.exists():  # the launched spec becomes revision 1
            CampaignRevision.objects.create(
                campaign=locked,
                number=1,
                spec=locked.spec,
                spec_source=revision_source(locked),
                created_by=locked.launched_by,
                created_at=locked.launched_at or locked.created_at,
            )
        number = _current_number(locked) + 1
        stored = {k: v for k, v in plan.items() if k != "source"}
        revision = CampaignRevision.objects.create(
            campaign=locked,
            number=number,
            spec=new,
            spec_source=plan["source"],
            plan=stored,
            created_by=actor,
            created_at=now,
        )
        for key, value in campaign_fields(new).items():
            setattr(locked, key, value)
        locked.spec_source = plan["source"]
        # A new launch time: workers cache a launched campaign's spec under it (campaigns.runs).
        locked.launched_at = now
        locked.save()
        rerun = _rerun(locked, plan, now)
        added = runs_create(locked, actor=actor)
        if rerun or added:
            Campaign.objects.filter(pk=locked.pk).update(
                state=CampaignState.RUNNING, finished_at=None
            )
        audit_record(
            action="campaign.campaign.revised",
            actor=actor,
            target=locked,
            context={"campaign_id": locked.pk},
            payload={
                "revision": number,
                "runs_rerun": len(rerun),
                "runs_added": added,
                "rerun_all": plan["rerun_all"],
                "variants": plan["changed_variants"] + plan["added_variants"],
            },
        )
        transaction.on_commit(runs_dispatch)
    return revision


def _rerun(campaign: Campaign, plan: dict, now) -> list[int]:
    """Put affected runs back in line with their affected variants reset; running ones stop
    first (their sandboxes end on commit, their worker sees the run is no longer its own)."""
    variants = plan["changed_variants"] + plan["added_variants"]
    runs = _affected_runs(campaign, rerun_all=plan["rerun_all"], variants=variants)
    running = list(runs.filter(state=RunState.RUNNING).values_list("pk", flat=True))
    if running:
        runs_transition(
            runs=RepoRun.objects.filter(pk__in=running),
            from_states=[RunState.RUNNING],
            to_state=RunState.CANCELLED,
            finished_at=now,
        )
        for run_id in running:
            transaction.on_commit(
                lambda run_id=run_id: sandboxes_terminate_live(
                    reason="campaign revised", run_id=run_id
                )
            )
    ids = runs_transition(
        runs=RepoRun.objects.filter(
            Q(pk__in=running) | Q(pk__in=runs.values_list("pk", flat=True))
        ),
        from_states=[RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED],
        to_state=RunState.PENDING,
        attempt=F("attempt") + 1,
        transient_retries=0,
        step="",
        snapshot_id=None,
        error="",
        error_signature="",
        error_summary="",
        worker="",
        queued_at=None,
        started_at=None,
        finished_at=None,
        **({"base_commit": ""} if plan["rerun_all"] else {}),
    )
    if not ids:
        return []
    Variant.objects.filter(run_id__in=ids, name__in=plan["removed_variants"]).delete()
    reset = Variant.objects.filter(run_id__in=ids)
    if not plan["rerun_all"]:
        reset = reset.filter(name__in=plan["changed_variants"])
    reset.update(**VARIANT_RESET)
    # A variant the worker was running when it stopped runs again too.
    Variant.objects.filter(run_id__in=running, state=VariantState.RUNNING).update(**VARIANT_RESET)
    return ids


def campaign_revisions(*, campaign: Campaign) -> list[CampaignRevision]:
    return list(campaign.revisions.select_related("created_by").order_by("-number"))
