"""Pages: model providers (admins), a variant's transcript and its JSON Lines download
(reviewers and admins who may see the variant's campaign)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_POST

from accounts.roles import capability_require, user_can
from agents.forms import ProviderForm
from agents.providers import provider_get, provider_remove, provider_set, providers_for_user
from agents.selectors import variant_transcript, variant_transcript_jsonl
from campaigns.models import Variant
from campaigns.selectors import run_get_for_user
from core.errors import NotFound


@login_required
def providers(request):
    items = providers_for_user(user=request.user)
    form = ProviderForm(request.POST or None)
    editing = request.GET.get("edit")
    if request.method != "POST" and editing:
        form = ProviderForm.for_provider(provider_get(name=editing[:100]))
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        provider = provider_set(
            name=data["name"],
            api_style=data["api_style"],
            base_url=data["base_url"],
            key=data["key"] or None,
            allowed_models=form.cleaned_models(),
            input_usd_per_mtok=data["input_usd_per_mtok"],
            output_usd_per_mtok=data["output_usd_per_mtok"],
            max_campaign_budget_usd=data["max_campaign_budget_usd"],
            max_run_budget_usd=data["max_run_budget_usd"],
            actor=request.user,
        )
        messages.success(request, f"Model provider {provider.name} saved.")
        return redirect("agents-providers")
    return render(request, "agents/providers.html", {"providers": items, "form": form})


@login_required
@require_POST
def provider_delete(request, name):
    provider_remove(name=name, actor=request.user)
    messages.success(request, f"Model provider {name} removed.")
    return redirect("agents-providers")


def _variant_for_transcript(*, user, pk: int) -> Variant:
    """404 unless the user may see the variant's campaign; 403 unless they review or audit."""
    variant = Variant.objects.select_related("run__campaign").filter(pk=pk).first()
    if variant is None:
        raise NotFound("No such variant.")
    run_get_for_user(user=user, pk=variant.run_id)
    if not user_can(user, "audit_view"):
        capability_require(user=user, capability="change_review")
    return variant


@login_required
def transcript(request, pk):
    variant = _variant_for_transcript(user=request.user, pk=pk)
    context = {
        "variant": variant,
        "run": variant.run,
        "campaign": variant.run.campaign,
        "calls": variant_transcript(variant_id=variant.pk),
    }
    return render(request, "agents/transcript.html", context)


@login_required
def transcript_jsonl(request, pk):
    variant = _variant_for_transcript(user=request.user, pk=pk)
    response = StreamingHttpResponse(
        variant_transcript_jsonl(variant_id=variant.pk), content_type="application/x-ndjson"
    )
    name = f"transcript-{variant.run.campaign.name}-run{variant.run_id}-{variant.name}.jsonl"
    response["Content-Disposition"] = content_disposition_header(True, name)
    return response
