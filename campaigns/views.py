"""Campaign pages: home (what needs me), list (search, sort, pages), new from YAML (validated
inline), preview, edit and re-apply (revisions), detail with live counts, run detail, secrets.

Each view fetches through the permission helpers in `campaigns.selectors`, validates a form,
calls a service and renders one template per page. Refusals (core.errors) are rendered by
config.errors.ErrorPageMiddleware; htmx polls get the partial their target names.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import user_can
from campaigns import listing, revisions, selectors, services
from campaigns.comparison import backend_comparison
from campaigns.forms import STARTER_SPEC, CampaignSpecForm, PreviewForm, SecretForm
from campaigns.preview import campaign_preview, preview_runs
from campaigns.reports import (
    baseline_compared,
    baseline_outcomes,
    report_summary,
    run_report,
    run_rows,
)
from campaigns.secret_grants import variant_diffs_for_display
from campaigns.secrets import secret_set
from campaigns.steps import run_page_context
from review.counts import review_counts

HOME = "home.html"
LIST = "campaigns/list.html"
NEW = "campaigns/new.html"
EDIT = "campaigns/edit.html"
DETAIL = "campaigns/detail.html"
RUN = "campaigns/run.html"
SECRETS = "campaigns/secrets.html"
SPEC_ERRORS = "campaigns/partials.html#spec-errors"
# Up to this many runs the live counts include variants against the baseline (one GROUP BY
# over the variants, ~23 ms at 10,000 of them); beyond, they are counted when asked.
BASELINE_INLINE_RUNS = 5000


def _partial(request, template: str, partials: dict[str, str]) -> str:
    """The template, or its named partial when htmx asks to swap that element (by its id)."""
    target = request.htmx.target if request.htmx else None
    return f"{template}#{partials[target]}" if target in partials else template


@login_required
def home(request):
    """What needs the signed-in person: their running campaigns, review queues, failures."""
    context = listing.home_for_user(user=request.user)
    if user_can(request.user, "change_review"):
        queues = [(c, review_counts(campaign=c)["todo"]) for c in context["reviewable"]]
        context["queues"] = [(c, n) for c, n in queues if n]
        context["queue_total"] = sum(n for _, n in queues)
    return render(request, HOME, context)


@login_required
def campaign_list(request):
    query = listing.ListQuery.from_params(request.GET, sorts=listing.CAMPAIGN_SORTS)
    page = listing.campaign_search(user=request.user, query=query)
    counts = selectors.campaigns_counts(campaign_ids=[c.pk for c in page])
    context = {"rows": [(c, counts[c.pk]) for c in page], "page": page, "query": query}
    return render(request, _partial(request, LIST, {"campaign-rows": "rows"}), context)


@login_required
def campaign_new(request):
    selectors.campaign_manage_check(user=request.user)
    form = CampaignSpecForm(request.POST or None, initial={"spec": STARTER_SPEC})
    if request.method == "POST" and form.is_valid():
        campaign = services.campaign_create(actor=request.user, source=form.cleaned_data["spec"])
        messages.success(request, f"Campaign {campaign.name} created as a draft.")
        return redirect("campaign-detail", pk=campaign.pk)
    return render(request, NEW, {"form": form})


@login_required
@require_POST
def campaign_validate(request):
    """htmx: check the YAML as it is typed; answers the spec-errors partial."""
    selectors.campaign_manage_check(user=request.user)
    campaign = None
    if request.POST.get("campaign"):  # the edit page checks a revision as it would be applied
        pk = request.POST["campaign"]
        campaign = selectors.campaign_get_for_user(user=request.user, pk=pk, action="manage")
    form = CampaignSpecForm(request.POST, campaign=campaign, actor=request.user)
    ok = form.is_valid()
    return render(request, SPEC_ERRORS, {"errors": form.errors.get("spec", []), "ok": ok})


@login_required
def campaign_detail(request, pk):
    campaign = selectors.campaign_get_for_user(user=request.user, pk=pk)
    state = request.GET.get("state") or ""
    signature = request.GET.get("signature") or ""
    if request.htmx and request.htmx.target == "baseline-outcomes":  # "Show outcomes"
        rows = baseline_outcomes(campaign=campaign)
        context = {"campaign": campaign, "against_baseline": rows, "baseline_on_demand": True}
        return render(request, f"{DETAIL}#baseline-outcomes", context)
    runs = selectors.runs_filter(campaign=campaign, state=state, signature=signature)
    page = Paginator(runs, 50).get_page(request.GET.get("page"))
    counts = selectors.campaign_counts(campaign=campaign)
    on_demand = baseline_compared(campaign.spec) and counts["total"] > BASELINE_INLINE_RUNS
    context = {
        "campaign": campaign,
        "revisions": revisions.campaign_revisions(campaign=campaign),
        "preview": _preview_context(campaign),
        "preview_form": PreviewForm(),
        "counts": counts,
        "against_baseline": None if on_demand else baseline_outcomes(campaign=campaign),
        "baseline_on_demand": on_demand,
        "comparison": backend_comparison(campaign=campaign),
        "clusters": selectors.error_clusters(campaign=campaign),
        "page": page,
        "rows": run_rows(page),
        "state": state,
        "signature": signature,
        "can_manage": user_can(request.user, "campaign_manage"),
    }
    return render(request, _partial(request, DETAIL, {"campaign-live": "live"}), context)


@login_required
@require_POST
def campaign_action(request, pk, action):
    campaign = selectors.campaign_get_for_user(user=request.user, pk=pk, action="manage")
    if action == "launch":
        services.campaign_launch(campaign=campaign, actor=request.user)
    elif action == "cancel":
        services.campaign_cancel(campaign=campaign, actor=request.user)
    elif action == "preview":
        form = PreviewForm(request.POST)
        sample = form.cleaned_data["sample"] if form.is_valid() else 0
        campaign_preview(campaign=campaign, actor=request.user, sample=sample)
        messages.info(request, "Preview started: it is not a launch and publishes nothing.")
    elif action == "retry":
        signature = request.POST.get("signature") or None
        ids = services.campaign_retry(campaign=campaign, actor=request.user, signature=signature)
        messages.info(request, f"{len(ids)} failed run(s) queued again.")
    return redirect("campaign-detail", pk=campaign.pk)


# The run page and the preview show each variant's diff inline, up to this many characters
# (the whole of it is on the compare page, one file at a time, and in the patch download):
# 20 variants of 100 MB each made one GET build gigabytes of HTML.
PAGE_DIFF_CHARS = 200_000


def _page_diff(text: str) -> tuple[str, bool]:
    return text[:PAGE_DIFF_CHARS], len(text) > PAGE_DIFF_CHARS


def _preview_context(campaign) -> dict | None:
    """The sample's runs with diffs and validation, while the campaign is a preview."""
    if campaign.state != "previewing":
        return None
    runs = [(run, run_report(run)) for run in preview_runs(campaign=campaign)]
    variants = [v for run, _ in runs for v in run.variants.all() if v.diff_sha256]
    shown = variant_diffs_for_display(variants=variants)  # masked where flagged
    by_name = {(v.run_id, v.name): shown[v.pk] for v in variants}
    for run, report in runs:
        for row in report["variants"]:
            row["diff_shown"], row["diff_cut"] = _page_diff(by_name.get((run.pk, row["name"]), ""))
    return {"runs": runs, "summary": report_summary([r for _, r in runs])}


@login_required
def campaign_edit(request, pk):
    """Edit and re-apply: a draft is updated; a launched campaign gets a new revision, shown
    as a spec diff and a plan before the manager confirms it."""
    campaign = selectors.campaign_get_for_user(user=request.user, pk=pk, action="manage")
    source = revisions.revision_source(campaign)
    form = CampaignSpecForm(
        request.POST or None, initial={"spec": source}, campaign=campaign, actor=request.user
    )
    plan = None
    if request.method == "POST" and form.is_valid():
        text = form.cleaned_data["spec"]
        if campaign.state in ("draft", "previewing"):
            services.campaign_update(campaign=campaign, actor=request.user, source=text)
            messages.success(request, f"Campaign {campaign.name} updated.")
            return redirect("campaign-detail", pk=campaign.pk)
        if request.POST.get("confirm") == "1":
            revision = revisions.campaign_revise(campaign=campaign, actor=request.user, source=text)
            messages.success(request, f"Revision {revision.number} applied.")
            return redirect("campaign-detail", pk=campaign.pk)
        plan = revisions.revision_plan(campaign=campaign, source=text, actor=request.user)
    return render(request, EDIT, {"campaign": campaign, "form": form, "plan": plan})


@login_required
def run_detail(request, pk, run_id):
    campaign = selectors.campaign_get_for_user(user=request.user, pk=pk)
    run = selectors.run_get_for_user(user=request.user, pk=run_id, campaign=campaign)
    variants = selectors.run_variants(run=run)
    shown = variant_diffs_for_display(variants=variants)  # masked where flagged
    for variant in variants:
        variant.diff_shown, variant.diff_cut = _page_diff(shown[variant.pk])
    context = {"campaign": campaign, "run": run, "variants": variants}
    context.update(run_page_context(run=run, variants=variants))
    return render(request, _partial(request, RUN, {"run-live": "run-live"}), context)


@login_required
def secret_list(request):
    secrets = selectors.secrets_for_user(user=request.user)
    form = SecretForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        secret_set(**form.cleaned_data, actor=request.user)
        messages.success(request, f"Secret {form.cleaned_data['name']} saved.")
        return redirect("secret-list")
    return render(request, SECRETS, {"form": form, "secrets": secrets})
