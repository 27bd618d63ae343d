"""API routes for the audit trail (admins only; every read and export is itself recorded)."""

from django.http import StreamingHttpResponse
from ninja import Router

from accounts.auth import require_capability
from audit.export import audit_export_record, bundle_lines, csv_lines
from audit.record import audit_view_record
from audit.schemas import AuditEventPageOut, ExportIn, VerifyOut
from audit.selectors import audit_events_page, audit_query_parse, event_as_dict
from audit.verify import audit_verify, audit_verify_record
from core.errors import Invalid
from core.schemas import errors_for

router = Router(tags=["audit"])
EXPORT_FORMATS = ("ndjson", "csv")


@router.get("/events", response={200: AuditEventPageOut, **errors_for(403, 422)})
def events_list(request, q: str = "", cursor: str = "", limit: int = 50):
    """Events newest first, filtered like the admin page (`action:… actor:… campaign:42
    created:>=2026-01-01 free text`); pass `next_cursor` back as `cursor` for the next page."""
    require_capability(request, "audit_view")
    page = audit_events_page(query=audit_query_parse(text=q), cursor=cursor, limit=limit)
    audit_view_record(actor=request.auth, what="api events", query=q, count=len(page.events))
    return {"items": [event_as_dict(e) for e in page.events], "next_cursor": page.next_cursor}


# POST: the check is costly and recorded, so a cross-site link must not be able to start it.
@router.post("/verify", response={200: VerifyOut, **errors_for(403)})
def verify(request):
    """Check the chain and the signed checkpoints now; the check itself is recorded."""
    require_capability(request, "audit_view")
    report = audit_verify()
    audit_verify_record(report=report, actor=request.auth)
    return report.as_dict()


@router.post(
    "/exports",
    response={200: None, **errors_for(403, 422)},
    openapi_extra={
        "responses": {
            200: {
                "description": "The export, streamed",
                "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/csv": {"schema": {"type": "string"}},
                },
            }
        }
    },
)
def export_create(request, data: ExportIn):
    """The whole sealed trail as a verifiable NDJSON bundle, or the filtered events as CSV."""
    require_capability(request, "audit_view")
    if data.format not in EXPORT_FORMATS:
        raise Invalid(f"expected one of {', '.join(EXPORT_FORMATS)}", field="format")
    if data.format == "csv":
        query = audit_query_parse(text=data.q)
        lines, content_type = csv_lines(query.events().order_by("id")), "text/csv"
    else:
        lines, content_type = bundle_lines(), "application/x-ndjson"
    audit_export_record(actor=request.auth, fmt=data.format, query=data.q)
    return StreamingHttpResponse(lines, content_type=content_type)


ROUTERS = [("/audit", router)]
