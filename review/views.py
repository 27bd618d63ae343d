"""Review pages: variant comparison, review queue, bulk review, campaign dashboard, changesets."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.roles import user_can
from campaigns.models import Variant
from campaigns.selectors import campaign_get_for_user, error_clusters
from review import selectors, services
from review.charts import burndown_svg
from review.diffs import diff_compare, diff_view

COMPARE = "review/compare.html"
QUEUE = "review/queue.html"
BULK = "review/bulk.html"
DASHBOARD = "review/dashboard.html"
CHANGESETS = "review/changesets.html"


def _campaign(request, pk, *, review_write=False):
    campaign = campaign_get_for_user(user=request.user, pk=pk)
    if review_write and not user_can(request.user, "change_review"):
        raise PermissionDenied("Your role does not allow reviewing changes (change review).")
    return campaign


def _compare_url(campaign, run_id, **params) -> str:
    from urllib.parse import urlencode

    url = reverse("review-compare", args=[campaign.pk, run_id])
    query = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{url}?{urlencode(query)}" if query else url


@login_required
def run_compare(request, pk, run_id):
    campaign = _campaign(request, pk)
    run = selectors.review_run_get_for_user(user=request.user, campaign=campaign, pk=run_id)
    data = selectors.run_comparison(run=run)
    by_id = {v.pk: v for v in data.variants}
    mode = "split" if request.GET.get("mode") == "split" else "unified"
    whitespace = request.GET.get("ws", "1") != "0"
    chosen = by_id.get(_int(request.GET.get("variant"))) or selectors.suggested_variant(
        data.variants, data.review
    )
    a, b = by_id.get(_int(request.GET.get("a"))), by_id.get(_int(request.GET.get("b")))
    base = {
        "variant": chosen.pk if chosen else None,
        "mode": mode,
        "ws": "1" if whitespace else "0",
    }
    context = {
        "campaign": campaign,
        "run": run,
        "data": data,
        "chosen": chosen,
        "approved": services.review_is_approved(data.review, data.review and data.review.variant),
        "mode": mode,
        "whitespace": whitespace,
        "files": diff_view(
            bytes(chosen.patch) if chosen else b"",
            mode=mode,
            whitespace=whitespace,
            expand=request.GET.get("expand", ""),
        ),
        "expand_url": _compare_url(campaign, run.pk, **base),
        "comparison": diff_compare(bytes(a.patch), bytes(b.patch)) if a and b else None,
        "name_a": a.name if a else "",
        "name_b": b.name if b else "",
        "a": a,
        "b": b,
        "neighbours": selectors.run_neighbours(run=run),
        "can_review": user_can(request.user, "change_review"),
        "four_eyes_blocked": services.four_eyes_applies(campaign=campaign, user=request.user),
        "urls": {
            "unified": _compare_url(campaign, run.pk, **{**base, "mode": "unified"}),
            "split": _compare_url(campaign, run.pk, **{**base, "mode": "split"}),
            "ws_toggle": _compare_url(
                campaign, run.pk, **{**base, "ws": "0" if whitespace else "1"}
            ),
        },
    }
    template = (
        f"{COMPARE}#viewer" if request.htmx and request.GET.get("part") == "viewer" else COMPARE
    )
    return render(request, template, context)


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _back(request, campaign, run_id) -> HttpResponse:
    nxt = request.POST.get("next", "")
    if nxt.startswith("/") and not nxt.startswith("//"):
        return redirect(nxt)
    return redirect(_compare_url(campaign, run_id))


def _decide(request, pk, run_id, action):
    campaign = _campaign(request, pk)
    run = selectors.review_run_get_for_user(user=request.user, campaign=campaign, pk=run_id)
    if action == "approve":
        # The launcher hears about the four-eyes rule, whatever their role.
        try:
            services.four_eyes_check(run=run, actor=request.user, request=request)
        except services.FourEyesRefused as exc:
            messages.error(request, str(exc))
            return _back(request, campaign, run.pk)
    _campaign(request, pk, review_write=True)
    variant = None
    if request.POST.get("variant"):
        variant = get_object_or_404(Variant, pk=_int(request.POST["variant"]), run=run)
    diff_hash = request.POST.get("diff_hash", "")
    comment = request.POST.get("comment", "")
    try:
        if action == "pick":
            if variant is None:
                raise services.ReviewError("variant: choose a variant to pick", field="variant")
            services.variant_pick(
                run=run, variant=variant, actor=request.user, diff_hash=diff_hash, request=request
            )
            messages.success(request, f"Picked “{variant.name}” for {run.repository.name}.")
        elif action == "approve":
            services.change_approve(
                run=run,
                actor=request.user,
                variant=variant,
                diff_hash=diff_hash,
                comment=comment,
                request=request,
            )
            messages.success(request, f"Approved the change for {run.repository.name}.")
        elif action == "reject":
            services.change_reject(
                run=run, actor=request.user, comment=comment, diff_hash=diff_hash, request=request
            )
            messages.success(request, f"Rejected the change for {run.repository.name}.")
        else:
            services.change_publish(run=run, actor=request.user, request=request)
            messages.success(request, f"Publishing {run.repository.name}.")
    except services.ReviewError as exc:
        messages.error(request, str(exc))
    return _back(request, campaign, run.pk)


@login_required
@require_POST
def run_decide(request, pk, run_id, action):
    return _decide(request, pk, run_id, action)


@login_required
def review_queue(request, pk):
    campaign = _campaign(request, pk)
    which = request.GET.get("which", "todo")
    if which not in selectors.QUEUE_FILTERS:
        which = "todo"
    counts = selectors.review_counts(campaign=campaign)
    page = selectors.review_queue(
        campaign=campaign, which=which, page=request.GET.get("page", 1), count=counts.get(which)
    )
    context = {
        "campaign": campaign,
        "page": page,
        "rows": selectors.queue_rows(page.object_list),
        "which": which,
        "filters": [(k, v, counts.get(k)) for k, v in selectors.QUEUE_FILTERS.items()],
        "can_review": user_can(request.user, "change_review"),
    }
    return render(request, f"{QUEUE}#queue" if request.htmx else QUEUE, context)


@login_required
def bulk_review(request, pk):
    campaign = _campaign(request, pk)
    names = selectors.variant_names(campaign=campaign)
    name = request.GET.get("variant") or names[0]
    if name not in names:
        name = names[0]
    services.variant_digests_refresh(campaign=campaign)
    groups = selectors.bulk_groups(campaign=campaign, variant_name=name)
    shown = request.GET.get("group", "")
    context = {
        "campaign": campaign,
        "names": names,
        "variant_name": name,
        "groups": groups,
        "shown": next((g for g in groups if g.group_key == shown), groups[0] if groups else None),
        "can_review": user_can(request.user, "change_review"),
    }
    if context["shown"] is not None:
        context["files"] = diff_view(bytes(context["shown"].sample.patch))
    return render(request, BULK, context)


@login_required
@require_POST
def bulk_approve(request, pk):
    campaign = _campaign(request, pk, review_write=True)
    run_ids = [i for i in (_int(x) for x in request.POST.getlist("run_ids")) if i is not None]
    try:
        result = services.changes_bulk_approve(
            campaign=campaign,
            group_key=request.POST.get("group_key", ""),
            variant_name=request.POST.get("variant_name", ""),
            run_ids=run_ids,
            actor=request.user,
            comment=request.POST.get("comment", ""),
            request=request,
        )
    except services.ReviewError as exc:
        messages.error(request, str(exc))
    else:
        msg = f"Approved {len(result['approved'])} change(s)."
        if result["skipped"]:
            msg += f" Skipped {len(result['skipped'])}: their diff differs or changed."
        messages.success(request, msg)
    url = reverse("review-bulk", args=[campaign.pk])
    return redirect(f"{url}?variant={request.POST.get('variant_name', '')}")


@login_required
@require_POST
def publish_approved(request, pk):
    campaign = _campaign(request, pk, review_write=True)
    result = services.changes_publish_approved(
        campaign=campaign, actor=request.user, request=request
    )
    messages.success(request, f"Publishing {len(result['queued'])} approved change(s).")
    return redirect(reverse("review-changesets", args=[campaign.pk]))


def _dashboard_context(request, campaign) -> dict:
    counts = selectors.run_state_counts(campaign=campaign)
    review_counts = selectors.review_counts(campaign=campaign)
    total = counts["total"] or 1
    runs = counts["runs"]
    return {
        "campaign": campaign,
        "counts": counts,
        "bar": {
            "succeeded": 100 * runs["succeeded"] / total,
            "failed": 100 * (runs["failed"] + runs["cancelled"]) / total,
            "active": 100 * (runs["queued"] + runs["running"]) / total,
        },
        "review_counts": review_counts,
        "next_up": selectors.queue_rows(selectors.review_next(campaign=campaign))
        if user_can(request.user, "change_review")
        else [],
        "changeset_counts": selectors.changeset_counts(campaign=campaign),
        "clusters": error_clusters(campaign=campaign)[:20],
        "chart": burndown_svg(selectors.burndown(campaign=campaign, total=counts["total"])),
        "can_manage": user_can(request.user, "campaign_manage"),
        "can_review": user_can(request.user, "change_review"),
    }


@login_required
def dashboard(request, pk):
    campaign = _campaign(request, pk)
    context = _dashboard_context(request, campaign)
    return render(request, f"{DASHBOARD}#live" if request.htmx else DASHBOARD, context)


@login_required
@require_POST
def retry_group(request, pk):
    from campaigns.services import CampaignStateError, campaign_retry

    campaign = campaign_get_for_user(user=request.user, pk=pk, write=True)
    signature = request.POST.get("signature", "")
    try:
        ids = campaign_retry(
            campaign=campaign, actor=request.user, signature=signature or None, request=request
        )
    except CampaignStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Retrying {len(ids)} failed run(s).")
    return redirect(reverse("review-dashboard", args=[campaign.pk]))


@login_required
def changesets(request, pk):
    campaign = _campaign(request, pk)
    page = selectors.changesets_for(campaign=campaign, page=request.GET.get("page", 1))
    return render(request, CHANGESETS, {"campaign": campaign, "page": page})
