"""Review pages: variant comparison, review queue, bulk review, campaign dashboard, changesets.

Each view fetches through `review.permissions`, calls a selector or a service and renders; a
refusal (`core.errors`) becomes the error page, or its fragment in #notices for htmx, in
config/errors.py. htmx requests get the partial their target names (`request.htmx.target`).
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.roles import user_can
from campaigns.secret_grants import variant_display_mask, variant_patch_for_display
from campaigns.selectors import campaign_get_for_user, error_clusters
from campaigns.services import campaign_retry
from review import counts, selectors, services
from review.charts import burndown_svg
from review.diffs import FILES_SHOWN, diff_compare, diff_view
from review.permissions import (
    diff_shown_check,
    diff_shown_token,
    review_campaign_get_for_user,
    review_run_get_for_user,
)
from review.publish_text import publish_text_for
from review.require import approve_warning, bulk_held_back, bulk_held_back_runs
from review.undo import decision_undoable, decision_withdraw

COMPARE = "review/compare.html"
QUEUE = "review/queue.html"
BULK = "review/bulk.html"
DASHBOARD = "review/dashboard.html"
CHANGESETS = "review/changesets.html"


def _partial(request, template: str, partials: dict[str, str]) -> str:
    """The template, or its named partial when htmx asks to swap that element."""
    target = request.htmx.target if request.htmx else None
    return f"{template}#{partials[target]}" if target in partials else template


def _compare_url(campaign, run_id, **params) -> str:
    url = reverse("review-compare", args=[campaign.pk, run_id])
    query = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{url}?{urlencode(query)}" if query else url


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _undo(request, campaign):
    """The decision just made (named by ?decided=) while its maker may still undo it."""
    pk = _int(request.GET.get("decided"))
    if pk is None:
        return None
    decision = selectors.decision_get(campaign=campaign, pk=pk, required=False)
    return decision if decision_undoable(decision=decision, user=request.user) else None


def _compare_context(request, run) -> dict:
    """What the comparison page shows: the chosen variant's diff, two variants compared."""
    campaign, data = run.campaign, selectors.run_comparison(run=run)
    by_id = {v.pk: v for v in data.variants}
    mode = "split" if request.GET.get("mode") == "split" else "unified"
    whitespace = request.GET.get("ws", "1") != "0"
    chosen = by_id.get(_int(request.GET.get("variant"))) or selectors.suggested_variant(
        data.variants, data.review
    )
    a, b = by_id.get(_int(request.GET.get("a"))), by_id.get(_int(request.GET.get("b")))
    base = {"variant": chosen.pk if chosen else None, "mode": mode, "ws": int(whitespace)}
    shown = min(max(_int(request.GET.get("files")) or FILES_SHOWN, FILES_SHOWN), 100_000)
    approved = selectors.review_is_approved(data.review, data.review and data.review.variant)
    return {
        "campaign": campaign,
        "run": run,
        "data": data,
        "chosen": chosen,
        "approved": approved,
        "publish_text": publish_text_for(campaign),
        "text_changes": selectors.approval_text_changes(review=data.review, campaign=campaign)
        if approved
        else [],
        "text_update_due": approved
        and selectors.changeset_text_update_due(review=data.review, changeset=data.changeset),
        "approve_warning": approve_warning(campaign=campaign, variant=chosen),
        "mode": mode,
        "whitespace": whitespace,
        "files": diff_view(
            variant_patch_for_display(variant=chosen) if chosen else b"",
            mode=mode,
            whitespace=whitespace,
            expand=request.GET.get("expand", ""),
            limit=shown,
            mask=variant_display_mask(variant=chosen) if chosen else None,
        ),
        "more_files_url": _compare_url(campaign, run.pk, **base, files=shown + FILES_SHOWN),
        "patch_url": reverse("review-patch", args=[campaign.pk, run.pk, chosen.pk])
        if chosen
        else "",
        "expand_url": _compare_url(campaign, run.pk, **base),
        "comparison": diff_compare(
            variant_patch_for_display(variant=a), variant_patch_for_display(variant=b)
        )
        if a and b
        else None,
        "name_a": a.name if a else "",
        "name_b": b.name if b else "",
        "a": a,
        "b": b,
        "neighbours": selectors.run_neighbours(run=run),
        "branch": publish_text_for(campaign).branch,
        "shown_token": diff_shown_token(user=request.user, variant=chosen) if chosen else "",
        "undo": _undo(request, campaign),
        "can_review": user_can(request.user, "change_review"),
        "four_eyes_blocked": services.four_eyes_applies(campaign=campaign, user=request.user),
        "urls": {
            "unified": _compare_url(campaign, run.pk, **{**base, "mode": "unified"}),
            "split": _compare_url(campaign, run.pk, **{**base, "mode": "split"}),
            "ws_toggle": _compare_url(campaign, run.pk, **{**base, "ws": int(not whitespace)}),
        },
    }


@login_required
@vary_on_headers("HX-Request", "HX-Target")
def run_compare(request, pk, run_id):
    run = review_run_get_for_user(user=request.user, campaign_pk=pk, pk=run_id)
    template = _partial(request, COMPARE, {"viewer": "viewer"})
    return render(request, template, _compare_context(request, run))


def _back(request, run):
    nxt = request.POST.get("next", "")
    if nxt and url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}):
        return redirect(nxt)
    return redirect(_compare_url(run.campaign, run.pk))


def _advance(request, run, message: str):
    """After a decision: the next change waiting for one, with Undo for the decision made."""
    decision = selectors.decision_latest(run=run, actor=request.user)
    messages.success(request, message)
    next_id = selectors.review_next_after(campaign=run.campaign, run_id=run.pk)
    if next_id is None:
        messages.info(request, "Nothing else is waiting for a decision.")
        url = reverse("review-queue", args=[run.campaign.pk])
    else:
        url = reverse("review-compare", args=[run.campaign.pk, next_id])
    return redirect(f"{url}?{urlencode({'decided': decision.pk})}" if decision else url)


@login_required
@require_POST
def run_decide(request, pk, run_id, action):
    """Pick, approve, reject or publish one run's change from the page that shows its diff."""
    run = review_run_get_for_user(
        user=request.user,
        campaign_pk=pk,
        pk=run_id,
        action="approve" if action == "approve" else "decide",
    )
    post, name = request.POST, run.repository.name
    variant = selectors.run_variant_get(run=run, ref=post.get("variant"), required=action == "pick")
    diff_hash, comment = post.get("diff_hash", ""), post.get("comment", "")
    if action == "pick":
        services.variant_pick(run=run, variant=variant, actor=request.user, diff_hash=diff_hash)
        messages.success(request, f"Picked “{variant.name}” for {name}.")
    elif action == "approve":
        diff_shown_check(
            user=request.user, variant=variant, diff_hash=diff_hash, token=post.get("shown", "")
        )
        services.change_approve(
            run=run,
            actor=request.user,
            variant=variant,
            diff_hash=diff_hash,
            comment=comment,
            publish_hash=post.get("publish_hash", ""),
        )
        return _advance(request, run, f"Approved the change for {name}.")
    elif action == "reject":
        services.change_reject(run=run, actor=request.user, comment=comment, diff_hash=diff_hash)
        return _advance(request, run, f"Rejected the change for {name}.")
    else:
        services.change_publish(run=run, actor=request.user)
        messages.success(request, f"Publishing {name}.")
    return _back(request, run)


@login_required
@require_POST
def decision_undo(request, pk, decision_id):
    """Withdraw one's own decision shortly after making it; back to that change."""
    campaign = review_campaign_get_for_user(user=request.user, pk=pk, action="decide")
    decision = selectors.decision_get(campaign=campaign, pk=decision_id)
    decision_withdraw(decision=decision, actor=request.user)
    name = decision.run.repository.name
    messages.success(request, f"Undone: the {decision.kind} decision on {name} is withdrawn.")
    return redirect(_compare_url(campaign, decision.run_id))


@login_required
@vary_on_headers("HX-Request", "HX-Target")
def review_queue(request, pk):
    campaign = review_campaign_get_for_user(user=request.user, pk=pk)
    which = request.GET.get("which", "todo")
    if which not in selectors.QUEUE_FILTERS:
        which = "todo"
    bucket_counts = counts.review_counts_shown(campaign=campaign)
    page = selectors.review_queue(
        campaign=campaign,
        which=which,
        page=request.GET.get("page", 1),
        count=bucket_counts[which],
    )
    can_review = user_can(request.user, "change_review")
    context = {
        "campaign": campaign,
        "page": page,
        "rows": selectors.queue_rows(page.object_list, campaign=campaign),
        "which": which,
        "undo": _undo(request, campaign),
        "filters": [(k, v, bucket_counts[k]) for k, v in selectors.QUEUE_FILTERS.items()],
        "can_review": can_review,
        "publish_all": (
            selectors.publish_all_counts(campaign=campaign)
            if which == "approved" and can_review
            else None
        ),
    }
    return render(request, _partial(request, QUEUE, {"queue": "queue"}), context)


@login_required
def bulk_review(request, pk):
    campaign = review_campaign_get_for_user(user=request.user, pk=pk)
    name = selectors.variant_name_resolve(campaign=campaign, name=request.GET.get("variant"))
    groups = selectors.bulk_groups(campaign=campaign, variant_name=name)
    shown = request.GET.get("group", "")
    shown = next((g for g in groups if g.group_key == shown), groups[0] if groups else None)
    held = bulk_held_back(campaign=campaign, variant_name=name)
    context = {
        "campaign": campaign,
        "names": selectors.variant_names(campaign=campaign),
        "variant_name": name,
        "groups": groups,
        "shown": shown,
        "held": held,
        "held_runs": bulk_held_back_runs(
            campaign=campaign, variant_name=name, group_key=shown.group_key
        )
        if shown and held.count
        else [],
        "files": diff_view(
            variant_patch_for_display(variant=shown.sample),
            differing=selectors.bulk_group_differing(shown),
            mask=variant_display_mask(variant=shown.sample),
        )
        if shown
        else [],
        "can_review": user_can(request.user, "change_review"),
        "publish_text": publish_text_for(campaign),
    }
    return render(request, BULK, context)


@login_required
@require_POST
def bulk_approve(request, pk):
    campaign = review_campaign_get_for_user(user=request.user, pk=pk, action="decide")
    run_ids = [i for i in (_int(x) for x in request.POST.getlist("run_ids")) if i is not None]
    hashes = {i: request.POST.get(f"hash_{i}", "") for i in run_ids}
    result = services.changes_bulk_approve(
        diff_hashes=hashes,
        campaign=campaign,
        group_key=request.POST.get("group_key", ""),
        variant_name=request.POST.get("variant_name", ""),
        run_ids=run_ids,
        actor=request.user,
        comment=request.POST.get("comment", ""),
        publish_hash=request.POST.get("publish_hash", ""),
    )
    msg = f"Approved {len(result.approved)} change(s)."
    if result.skipped:
        msg += f" Skipped {len(result.skipped)}: their diff differs or changed."
    if result.held_back:
        msg += f" Held back by review.require: {result.held_back}; review them one by one."
    messages.success(request, msg)
    url = reverse("review-bulk", args=[campaign.pk])
    return redirect(f"{url}?{urlencode({'variant': request.POST.get('variant_name', '')})}")


@login_required
@require_POST
def publish_approved(request, pk):
    campaign = review_campaign_get_for_user(user=request.user, pk=pk, action="decide")
    result = services.changes_publish_approved(campaign=campaign, actor=request.user)
    messages.success(request, f"Publishing {len(result.queued)} approved change(s).")
    if result.refused:
        shown = "; ".join(f"run {r.run_id}: {r.reason}" for r in result.refused[:5])
        messages.error(request, f"Not published: {len(result.refused)}. {shown}")
    return redirect(reverse("review-changesets", args=[campaign.pk]))


def _dashboard_context(request, campaign) -> dict:
    state_counts = counts.run_state_counts(campaign=campaign)
    total, runs = state_counts["total"] or 1, state_counts["runs"]
    can_review = user_can(request.user, "change_review")
    return {
        "campaign": campaign,
        "counts": state_counts,
        "bar": {
            "succeeded": 100 * runs["succeeded"] / total,
            "failed": 100 * (runs["failed"] + runs["cancelled"]) / total,
            "active": 100 * (runs["queued"] + runs["running"]) / total,
            "done_failed": 100 * (runs["succeeded"] + runs["failed"] + runs["cancelled"]) / total,
        },
        "review_counts": counts.review_counts_shown(campaign=campaign),
        "next_up": selectors.queue_rows(selectors.review_next(campaign=campaign))
        if can_review
        else [],
        "changeset_counts": selectors.changeset_counts(campaign=campaign),
        "clusters": error_clusters(campaign=campaign)[:20],
        "chart": burndown_svg(selectors.burndown(campaign=campaign, total=state_counts["total"])),
        "can_manage": user_can(request.user, "campaign_manage"),
        "can_review": can_review,
    }


@login_required
@vary_on_headers("HX-Request", "HX-Target")
def dashboard(request, pk):
    campaign = review_campaign_get_for_user(user=request.user, pk=pk)
    template = _partial(request, DASHBOARD, {"dashboard-live": "live"})
    return render(request, template, _dashboard_context(request, campaign))


@login_required
@require_POST
def retry_group(request, pk):
    """ "Retry this group" on the dashboard: a campaign action (campaign manage), not a review."""
    campaign = campaign_get_for_user(user=request.user, pk=pk, action="manage")
    signature = request.POST.get("signature", "")
    ids = campaign_retry(campaign=campaign, actor=request.user, signature=signature or None)
    messages.success(request, f"Retrying {len(ids)} failed run(s).")
    return redirect(reverse("review-dashboard", args=[campaign.pk]))


@login_required
@vary_on_headers("HX-Request", "HX-Target")
def changesets(request, pk):
    campaign = review_campaign_get_for_user(user=request.user, pk=pk)
    page = selectors.changesets_for(campaign=campaign, page=request.GET.get("page", 1))
    template = _partial(request, CHANGESETS, {"changesets": "changesets"})
    return render(request, template, {"campaign": campaign, "page": page})
