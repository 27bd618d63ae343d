"""Campaign pages: list, new from YAML (validated inline), detail with live counts, run detail."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import user_can
from campaigns import secrets, selectors, services, states
from campaigns.forms import CampaignSpecForm, SecretForm
from campaigns.models import Secret
from campaigns.spec import CampaignSpecError, spec_parse

PAGE = "campaigns/campaigns.html"


def _require_manager(user) -> None:
    if not user_can(user, "campaign_manage"):
        raise PermissionDenied("Your role does not allow managing campaigns.")


@login_required
def campaign_list(request):
    campaigns = list(selectors.campaign_list(user=request.user)[:200])
    counts = selectors.campaigns_counts(campaign_ids=[c.pk for c in campaigns])
    rows = [(c, counts[c.pk]) for c in campaigns]
    return render(request, PAGE, {"view": "list", "rows": rows})


@login_required
def campaign_new(request):
    _require_manager(request.user)
    form = CampaignSpecForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            campaign = services.campaign_create(
                actor=request.user, source=form.cleaned_data["spec"]
            )
        except CampaignSpecError as exc:
            form.add_spec_errors(exc)
        else:
            messages.success(request, f"Campaign {campaign.name} created as a draft.")
            return redirect("campaign-detail", pk=campaign.pk)
    return render(request, PAGE, {"view": "new", "title": "New campaign", "form": form})


@login_required
@require_POST
def campaign_validate(request):
    """htmx: validate the YAML as it is typed; returns the errors partial."""
    _require_manager(request.user)
    errors, ok = [], False
    try:
        spec_parse(request.POST.get("spec", ""))
        ok = True
    except CampaignSpecError as exc:
        errors = exc.errors
    return render(request, f"{PAGE}#spec-errors", {"errors": errors, "ok": ok})


def _detail_context(request, campaign) -> dict:
    state = request.GET.get("state") or None
    signature = request.GET.get("signature") or None
    runs = selectors.runs_filter(campaign=campaign, state=state, signature=signature)
    page = Paginator(runs, 50).get_page(request.GET.get("page"))
    return {
        "campaign": campaign,
        "counts": selectors.campaign_counts(campaign=campaign),
        "clusters": selectors.error_clusters(campaign=campaign),
        "page": page,
        "state": state or "",
        "signature": signature or "",
        "can_manage": user_can(request.user, "campaign_manage"),
    }


@login_required
def campaign_detail(request, pk):
    campaign = selectors.campaign_get_for_user(user=request.user, pk=pk)
    context = _detail_context(request, campaign)
    if request.htmx:
        return render(request, f"{PAGE}#live", context)
    return render(request, PAGE, {**context, "view": "detail", "title": campaign.name})


@login_required
@require_POST
def campaign_action(request, pk, action):
    campaign = selectors.campaign_get_for_user(user=request.user, pk=pk, write=True)
    try:
        if action == "launch":
            services.campaign_launch(campaign=campaign, actor=request.user)
        elif action == "cancel":
            services.campaign_cancel(campaign=campaign, actor=request.user)
        elif action == "retry":
            ids = services.campaign_retry(
                campaign=campaign,
                actor=request.user,
                signature=request.POST.get("signature") or None,
            )
            messages.info(request, f"{len(ids)} failed run(s) queued again.")
    except states.CampaignStateError as exc:
        messages.error(request, str(exc))
    return redirect("campaign-detail", pk=campaign.pk)


@login_required
def run_detail(request, pk, run_id):
    campaign = selectors.campaign_get_for_user(user=request.user, pk=pk)
    run = selectors.run_get_for_user(user=request.user, pk=run_id, campaign=campaign)
    context = {"campaign": campaign, "run": run, "variants": selectors.run_variants(run=run)}
    if request.htmx:
        return render(request, f"{PAGE}#run-live", context)
    return render(request, PAGE, {**context, "view": "run", "title": run.repository.name})


@login_required
def secret_list(request):
    if not user_can(request.user, "secret_manage"):
        raise PermissionDenied("Only admins manage secrets.")
    form = SecretForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            secrets.secret_set(**form.cleaned_data, actor=request.user)
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            form.add_error(field if field in form.fields else None, message or str(exc))
        else:
            messages.success(request, f"Secret {form.cleaned_data['name']} saved.")
            return redirect("secret-list")
    context = {"view": "secrets", "title": "Secrets", "form": form, "secrets": Secret.objects.all()}
    return render(request, PAGE, context)
