"""Admin pages for the audit trail: search, detail, histories, verification and exports."""

import json

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts.roles import user_can
from audit.export import audit_export_record, bundle_lines, csv_lines
from audit.models import AuditCheckpoint, AuditEvent
from audit.record import audit_view_record
from audit.selectors import (
    AuditFilterError,
    audit_event_get,
    audit_events_page,
    audit_query_parse,
    event_seq,
)
from audit.verify import audit_verify, audit_verify_record
from core.errors import PermissionDenied


def _audit_access_require(user) -> None:
    """Reading, verifying and exporting the trail is for admins (the refusal is audited where
    errors are mapped, config/errors.py)."""
    if not user_can(user, "audit_view"):
        raise PermissionDenied(
            "Reading the audit trail is for admins (audit view).", capability="audit_view"
        )


def _events_page(request, *, title: str, what: str, extra: Q | None = None, scope: str = ""):
    _audit_access_require(request.user)
    text = request.GET.get("q", "")
    context = {"title": title, "q": text, "scope": scope, "error": "", "page": None}
    try:
        page = audit_events_page(
            query=audit_query_parse(text=text), cursor=request.GET.get("cursor", ""), extra=extra
        )
    except AuditFilterError as exc:
        context["error"] = exc.message
        status = 400
    else:
        context["page"] = page
        status = 200
        audit_view_record(actor=request.user, what=what, query=text, count=len(page.events))
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
    try:
        event = audit_event_get(event_id=event_id)
    except AuditEvent.DoesNotExist:
        raise Http404("No audit event with this id.") from None
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
    context = {
        "report": report,
        "checkpoint": AuditCheckpoint.objects.order_by("-number").first(),
        "events": AuditEvent.objects.count(),
        "unsealed": AuditEvent.objects.filter(link__isnull=True).count(),
    }
    template = "audit/verify.html#status" if request.htmx else "audit/verify.html"
    return render(request, template, context)


def _download(lines, *, filename: str, content_type: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
def export_bundle(request):
    _audit_access_require(request.user)
    audit_export_record(actor=request.user, fmt="ndjson")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    return _download(
        bundle_lines(), filename=f"convoy-audit-{stamp}.ndjson", content_type="application/x-ndjson"
    )


@login_required
def export_csv(request):
    _audit_access_require(request.user)
    text = request.GET.get("q", "")
    try:
        query = audit_query_parse(text=text)
    except AuditFilterError as exc:
        return render(
            request,
            "audit/events.html",
            {"title": "Audit trail", "q": text, "error": exc.message, "page": None},
            status=400,
        )
    audit_export_record(actor=request.user, fmt="csv", query=text)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    return _download(
        csv_lines(query.events().order_by("id")),
        filename=f"convoy-audit-{stamp}.csv",
        content_type="text/csv",
    )
