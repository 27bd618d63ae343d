"""The whole patch of a variant as a file: what a page offers when it draws only part of it.

Secrets are masked as on the page when the diff was flagged for holding one.
"""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.utils.http import content_disposition_header

from campaigns.secret_grants import variant_patch_for_display
from review.permissions import review_run_get_for_user


@login_required
def variant_patch_download(request, pk, run_id, variant_id: int):
    run = review_run_get_for_user(user=request.user, campaign_pk=pk, pk=run_id)
    variant = run.variants.filter(pk=variant_id).first()
    if variant is None:
        raise Http404("No such variant in this run.")
    response = HttpResponse(
        variant_patch_for_display(variant=variant), content_type="text/x-diff; charset=utf-8"
    )
    name = f"{run.campaign.name}-run{run.pk}-{variant.name}.patch"
    response["Content-Disposition"] = content_disposition_header(True, name)
    return response
