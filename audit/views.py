"""Admin pages for the audit trail: search, detail, histories, verification and exports."""

import json

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.roles import capability_require
from audit.export import audit_export_record, bundle_lines, csv_lines
from audit.forms import AuditFilterForm
from audit.keys import key_id, public_key_pem, verifying_key
from audit.record import audit_view_record
from audit.selectors import audit_event_get, audit_events_page, audit_seal_status, event_seq
from audit.verify import audit_verify, audit_verify_record

AUDIT_ADMINS_ONLY = "Reading the audit trail is for admins (audit view)."


def _audit_access_require(user) -> None:
    """Reading, verifying and exporting the trail is for admins."""
    capability_require(user=user, capability="audit_view", message=AUDIT_ADMINS_ONLY)


def _events_page(request, *, title: str, what: str, extra: Q | None = None, scope: str = ""):
    _audit_access_require(request.user)
    form = AuditFilterForm(request.GET)
    text = request.GET.get("q", "")
    context = {"title": title, "q": text, "scope": scope, "error": "", "page": None}
    if form.is_valid():
        page = audit_events_page(
            query=form.cleaned_data["q"], cursor=request.GET.get("cursor", ""), extra=extra
        )
        context["page"] = page
        status = 200
        audit_view_record(actor=request.user, what=what, query=text, count=len(page.events))
    else:
        context["error"] = form.errors["q"][0]
        status = 400
    if request.htmx:
        # htmx swaps only 2xx answers; the partial carries the error message itself.
        return render(request, "audit/events.html#results", context)
    return render(request, "audit/events.html", context, status=status)


@login_required
def events(request):
    return _events_page(request, title="Audit trail", what="events")


@login_required
def campaign_history(request, campaign_id: int):
    return _events_page(
        request,
        title=f"Campaign {campaign_id}: full history",
        what=f"campaign:{campaign_id}",
        extra=Q(campaign_id=campaign_id),
        scope=f"campaign:{campaign_id}",
    )


@login_required
def sandbox_history(request, sandbox_id: int):
    return _events_page(
        request,
        title=f"Sandbox {sandbox_id}: full history",
        what=f"sandbox:{sandbox_id}",
        extra=Q(sandbox_id=sandbox_id),
        scope=f"sandbox:{sandbox_id}",
    )


@login_required
def event_detail(request, event_id):
    _audit_access_require(request.user)
    event = audit_event_get(event_id=event_id)
    audit_view_record(actor=request.user, what="event", target=event)
    body = json.loads(event.body)
    return render(
        request,
        "audit/event.html",
        {
            "event": event,
            "body": body,
            "pretty": json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False),
            "seq": event_seq(event),
            "chain_hash": bytes(event.link.chain_hash).hex() if event_seq(event) else "",
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def verify(request):
    _audit_access_require(request.user)
    report = None
    if request.method == "POST":
        report = audit_verify()
        audit_verify_record(report=report, actor=request.user)
    else:
        audit_view_record(actor=request.user, what="verification status")
    key = verifying_key()
    context = {
        "report": report,
        "key_id": key_id(key),
        "public_key_pem": public_key_pem(key),  # for auditors checking exports elsewhere
        **audit_seal_status(),
    }
    template = "audit/verify.html#status" if request.htmx else "audit/verify.html"
    return render(request, template, context)


def _download(lines, *, filename: str, content_type: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# Exports are POSTs (CSRF-checked): each streams the trail and is recorded, so a cross-site
# link (SameSite=Lax sends the session cookie with a top-level GET) must not start one.
@login_required
@require_POST
def export_bundle(request):
    _audit_access_require(request.user)
    audit_export_record(actor=request.user, fmt="ndjson")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    return _download(
        bundle_lines(), filename=f"convoy-audit-{stamp}.ndjson", content_type="application/x-ndjson"
    )


@login_required
@require_POST
def export_csv(request):
    _audit_access_require(request.user)
    form = AuditFilterForm(request.POST)
    text = request.POST.get("q", "")
    if not form.is_valid():
        context = {"title": "Audit trail", "q": text, "error": form.errors["q"][0], "page": None}
        return render(request, "audit/events.html", context, status=400)
    query = form.cleaned_data["q"]
    audit_export_record(actor=request.user, fmt="csv", query=text)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    return _download(
        csv_lines(query.events().order_by("id")),
        filename=f"convoy-audit-{stamp}.csv",
        content_type="text/csv",
    )
