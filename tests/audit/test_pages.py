"""The admin pages and API for the audit trail, as an admin, a reviewer and an API client see
them: filters, histories, detail, verification, exports, and refusals that are recorded."""

import csv
import html
import io
import json
import re

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.services import token_create
from audit.models import AuditEvent
from audit.record import audit_record
from audit.seal import audit_seal

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def events(db):
    made = [
        audit_record(
            action="sandbox.exec.completed",
            actor_type="agent",
            on_behalf_of="mia",
            context={"campaign_id": 42, "sandbox_id": 7},
            payload={"argv": ["pytest", "<script>alert(1)</script>"], "exit_code": 1},
        ),
        audit_record(
            action="campaign.campaign.launched",
            actor_type="system",
            context={"campaign_id": 43},
        ),
        audit_record(
            action="people.permission.denied",
            actor_type="system",
            outcome="denied",
            payload={"capability": "=cmd|' /C calc'!A0"},
        ),
    ]
    return made


def _actions(response) -> list[str]:
    return [
        line.split("<code>")[1].split("</code>")[0]
        for line in response.content.decode().split('data-testid="audit-row"')[1:]
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/audit/"), ("get", "/audit/verify/"), ("post", "/audit/export.ndjson")],
)
def test_reviewer_is_refused_and_the_refusal_is_recorded(client, reviewer, method, path):
    client.force_login(reviewer)
    assert getattr(client, method)(path).status_code == 403
    denial = AuditEvent.objects.get(action="people.permission.denied")
    body = json.loads(denial.body)
    assert (denial.outcome, denial.actor_display) == ("denied", "rob")
    assert body["payload"] == {"capability": "audit_view", "path": path}
    assert not AuditEvent.objects.filter(action__startswith="audit.").exists()


def test_anonymous_visitor_is_sent_to_sign_in(client, db):
    response = client.get("/audit/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_filters_narrow_the_list_and_reading_is_recorded(admin_client, events):
    response = admin_client.get("/audit/", {"q": "action:sandbox.* campaign:42 outcome:success"})
    assert _actions(response) == ["sandbox.exec.completed"]
    assert _actions(admin_client.get("/audit/", {"q": "outcome:denied"})) == [
        "people.permission.denied"
    ]
    assert _actions(admin_client.get("/audit/", {"q": "created:>=2999-01-01"})) == []
    assert _actions(admin_client.get("/audit/", {"q": "actor:agent alert"})) == [
        "sandbox.exec.completed"
    ]
    viewed = AuditEvent.objects.filter(action="audit.events.viewed").order_by("id").first()
    assert (
        json.loads(viewed.body)["payload"]["query"]
        == "action:sandbox.* campaign:42 outcome:success"
    )


@pytest.mark.parametrize(
    ("q", "message"),
    [
        ("colour:red", "unknown filter &#x27;colour&#x27;"),
        ("campaign:abc", "campaign: expected a number"),
        ("created:>=yesterday", "created: &#x27;yesterday&#x27; is not a date"),
        ("outcome:meh", "outcome: &#x27;meh&#x27; is not one of"),
    ],
)
def test_a_bad_filter_is_named_not_a_500(admin_client, db, q, message):
    response = admin_client.get("/audit/", {"q": q})
    assert response.status_code == 400
    assert message in response.content.decode()


def test_htmx_search_swaps_just_the_results(admin_client, events):
    response = admin_client.get("/audit/", {"q": "outcome:denied"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="audit-results"')
    assert "<html" not in html and "people.permission.denied" in html
    bad = admin_client.get("/audit/", {"q": "sandbox:x"}, headers={"HX-Request": "true"})
    assert bad.status_code == 200 and "sandbox: expected a number" in bad.content.decode()


def test_campaign_and_sandbox_history_show_only_their_events(admin_client, events):
    assert _actions(admin_client.get("/audit/campaigns/42/")) == ["sandbox.exec.completed"]
    assert _actions(admin_client.get("/audit/campaigns/43/")) == ["campaign.campaign.launched"]
    assert _actions(admin_client.get("/audit/sandboxes/7/")) == ["sandbox.exec.completed"]
    assert _actions(admin_client.get("/audit/sandboxes/8/")) == []


def test_event_detail_shows_escaped_pretty_json(admin_client, events):
    response = admin_client.get(f"/audit/events/{events[0].event_id}/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assert "  &quot;on_behalf_of&quot;: &quot;mia&quot;" in html
    assert (
        admin_client.get("/audit/events/00000000-0000-0000-0000-000000000000/").status_code == 404
    )


def test_verify_page_reports_an_intact_trail_and_records_the_check(admin_client, events):
    audit_seal()
    response = admin_client.post("/audit/verify/")
    assert 'data-testid="verify-ok"' in response.content.decode()
    assert AuditEvent.objects.filter(action="audit.chain.verified", outcome="success").count() == 1


def test_the_key_the_verify_page_shows_checks_an_export_elsewhere(admin_client, events, tmp_path):
    # The auditor's trusted copy of the key comes from the installation, not from the bundle.
    audit_seal()
    page = admin_client.get("/audit/verify/").content.decode()
    pem = html.unescape(re.search(r"<pre>(-----BEGIN PUBLIC KEY-----.*?)</pre>", page, re.S)[1])
    (tmp_path / "key.pem").write_text(pem)
    response = admin_client.post("/audit/export.ndjson")
    (tmp_path / "b.ndjson").write_bytes(b"".join(response.streaming_content))
    out = io.StringIO()
    call_command(
        "audit_verify",
        "--bundle",
        str(tmp_path / "b.ndjson"),
        "--public-key",
        str(tmp_path / "key.pem"),
        stdout=out,
    )
    assert out.getvalue().startswith("OK: ")


def test_csv_export_follows_the_filter_and_defuses_formulas(admin_client, events):
    response = admin_client.post("/audit/export.csv", {"q": "outcome:denied"})
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["event_id", "occurred_at", "action"]
    assert [r[2] for r in rows[1:]] == ["people.permission.denied"]
    exported = AuditEvent.objects.get(action="audit.events.exported")
    assert json.loads(exported.body)["payload"] == {"format": "csv", "query": "outcome:denied"}


def test_csv_cells_a_spreadsheet_would_run_are_defused(admin_client, db):
    """A value a sandbox chose (a model name, say) reaches the export: a cell starting with a
    tab or a space before `=`, or `x;=…` left unquoted (two cells where `;` separates), was
    run as a formula."""
    lures = ["\t=1+1", " =1+1", "\r=1+1", "x;=WEBSERVICE(A1)", "=cmd|' /C calc'!A0"]
    for lure in lures:
        audit_record(action="agents.model.refused", actor_type="agent", on_behalf_of=lure)
    response = admin_client.post("/audit/export.csv", {"q": "action:agents.model.refused"})
    raw = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(raw)))
    column = rows[0].index("on_behalf_of")
    cells = sorted(r[column] for r in rows[1:])
    assert cells == sorted(
        ["'\t=1+1", "' =1+1", "'\r=1+1", "x;=WEBSERVICE(A1)", "'=cmd|' /C calc'!A0"]
    )
    assert '"x;=WEBSERVICE(A1)"' in raw  # quoted, one cell whatever the separator


@pytest.mark.shapes("embedded")  # SQLite seals inline, so the test's own events are in it
def test_downloaded_bundle_verifies_offline(admin_client, events, tmp_path, settings):

    settings.AUDIT_CHECKPOINT_EVERY = 2
    audit_seal()  # what the periodic task does: events are linked already, this signs
    response = admin_client.post("/audit/export.ndjson")
    text = b"".join(response.streaming_content).decode()
    lines = [json.loads(x) for x in text.splitlines()]
    assert lines[0]["type"] == "header" and len(lines[0]["public_key"]) == 64
    assert [x["type"] for x in lines[1:]].count("checkpoint") >= 1
    sealed = [x["event_id"] for x in lines if x["type"] == "event"]
    positions = [sealed.index(str(e.event_id)) for e in events]
    assert positions == sorted(positions)
    bundle = tmp_path / "b.ndjson"
    bundle.write_text(text)
    out = io.StringIO()
    call_command("audit_verify", "--bundle", str(bundle), stdout=out)
    assert out.getvalue().startswith("OK: ")


EXPORTS_AND_VERIFY = ["/audit/export.ndjson", "/audit/export.csv", "/api/v1/audit/verify"]


def test_a_link_cannot_start_an_export_or_a_verification(admin_user, events):
    """Each streams or checks the whole trail and is recorded; a top-level GET from another site
    carries the session cookie (SameSite=Lax), and answered with the work done."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    for path in EXPORTS_AND_VERIFY:
        response = client.get(path, {"q": "outcome:denied"})
        assert response.status_code == 405, path
        assert "POST" in response["Allow"]
    for path in EXPORTS_AND_VERIFY:  # a form another site posts has no CSRF token
        assert client.post(path, {"q": ""}).status_code == 403, path
    assert not AuditEvent.objects.filter(action__startswith="audit.").exists()


def test_the_pages_export_and_the_api_verifies_with_a_posted_csrf_token(admin_user, events):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    page = client.get("/audit/", {"q": "outcome:denied"}).content.decode()
    assert '<form method="post" action="/audit/export.ndjson"' in page
    assert '<form method="post" action="/audit/export.csv"' in page
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
    bundle = client.post("/audit/export.ndjson", {"csrfmiddlewaretoken": token})
    assert bundle.status_code == 200
    assert b'"type":"header"' in b"".join(bundle.streaming_content)
    rows = client.post("/audit/export.csv", {"csrfmiddlewaretoken": token, "q": "outcome:denied"})
    assert b"people.permission.denied" in b"".join(rows.streaming_content)
    report = client.post("/api/v1/audit/verify", headers={"X-CSRFToken": token})
    assert report.status_code == 200 and report.json()["ok"] is True
    assert AuditEvent.objects.filter(action="audit.events.exported").count() == 2
    assert AuditEvent.objects.filter(action="audit.chain.verified").count() == 1


def test_nav_links_to_the_trail_for_admins_only(client, admin_user, manager):
    client.force_login(manager)
    assert b'href="/audit/"' not in client.get("/").content
    client.force_login(admin_user)
    assert b'href="/audit/"' in client.get("/").content


# --- API ---------------------------------------------------------------------------------------
def _bearer(user) -> dict:
    return {"Authorization": f"Bearer {token_create(user=user, scope='write')[1]}"}


def test_api_refuses_a_reviewer_and_records_it(client, reviewer):
    response = client.get("/api/v1/audit/events", headers=_bearer(reviewer))
    assert response.status_code == 403
    assert AuditEvent.objects.filter(
        action="people.permission.denied", actor_display="rob"
    ).exists()


def test_api_lists_events_with_filters_and_cursor(client, admin_user, events):
    headers = _bearer(admin_user)
    first = client.get(
        "/api/v1/audit/events", {"q": "campaign:42 campaign:42", "limit": 1}, headers=headers
    )
    assert first.status_code == 200
    assert [e["action"] for e in first.json()["items"]] == ["sandbox.exec.completed"]
    page = client.get("/api/v1/audit/events", {"limit": 2}, headers=headers).json()
    rest = client.get(
        "/api/v1/audit/events", {"limit": 2, "cursor": page["next_cursor"]}, headers=headers
    ).json()
    seen = [e["event_id"] for e in page["items"] + rest["items"]]
    assert len(seen) == len(set(seen)) == 4  # 3 events + the token's people.token.created
    assert page["items"][0]["actor"]["type"] in ("human", "api_token", "system", "agent")


def test_api_names_a_bad_filter_with_its_field(client, admin_user, db):
    response = client.get(
        "/api/v1/audit/events", {"q": "created:<=soon"}, headers=_bearer(admin_user)
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "q"
    assert "created" in error["message"]


def test_api_verify_and_export(client, admin_user, events):
    headers = _bearer(admin_user)
    report = client.post("/api/v1/audit/verify", headers=headers).json()
    assert report["ok"] is True and report["findings"] == []
    response = client.post(
        "/api/v1/audit/exports",
        {"format": "csv", "q": "campaign:43"},
        content_type="application/json",
        headers=headers,
    )
    text = b"".join(response.streaming_content).decode()
    assert response.status_code == 200 and "campaign.campaign.launched" in text
    bad = client.post(
        "/api/v1/audit/exports",
        {"format": "xml"},
        content_type="application/json",
        headers=headers,
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "format"
    assert AuditEvent.objects.filter(action="audit.events.exported").count() == 1
    assert AuditEvent.objects.filter(action="audit.chain.verified").count() == 1
