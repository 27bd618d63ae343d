"""Review pages as a signed-in user sees them: comparison, queue, bulk, dashboard, queries."""

import json
import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from campaigns.models import RepoRun, RunTransition
from review.models import Decision, ReviewState, RunReview
from review.selectors import burndown
from tests.factories import (
    PASSWORD,
    campaign_bulk_make,
    campaign_make,
    patch_for,
    run_make,
    user_make,
    variant_make,
    variant_rerun,
)

pytestmark = pytest.mark.shapes("embedded", "production")


def _login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def run3(manager):
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign)
    xss = "<script>alert('diff')</script>"
    variants = [
        variant_make(run=run, name="conservative", position=0, patch=patch_for("a.py", "x", "y")),
        variant_make(run=run, name="aggressive", position=1, patch=patch_for("a.py", "x", xss)),
        variant_make(
            run=run,
            name="broken",
            position=2,
            patch=patch_for("a.py", "x", "z"),
            validation="failed",
            output_tail="FAILED test_a.py::test_x - <img src=x onerror=alert(1)>",
        ),
    ]
    return campaign, run, variants


def test_comparison_page_shows_variants_side_by_side_escaped(client, reviewer, run3):
    campaign, run, (a, b, _c) = run3
    _login(client, reviewer)
    url = reverse("review-compare", args=[campaign.pk, run.pk])
    html = client.get(url, {"variant": b.pk, "mode": "split"}).content.decode()
    for name in ("conservative", "aggressive", "broken"):
        assert f'data-testid="variant-{name}"' in html
    assert "FAILED test_a.py::test_x" in html  # the failing output's tail
    assert "<script>alert(" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html or "&lt;</span>" in html
    compared = client.get(url, {"a": a.pk, "b": b.pk}).content.decode()
    assert 'data-testid="compare"' in compared and "differs" in compared


def _shown(client, campaign, run, variant) -> str:
    """The token the comparison page signs beside the diff it shows."""
    html = client.get(
        reverse("review-compare", args=[campaign.pk, run.pk]), {"variant": variant.pk}
    )
    match = re.search(r'name="shown" value="([^"]+)"', html.content.decode())
    assert match, "the page shows no approve form"
    return match.group(1)


def test_decisions_through_the_page_and_a_stale_approve_is_refused(client, reviewer, run3):
    campaign, run, (a, _b, _c) = run3
    _login(client, reviewer)
    decide = reverse("review-decide", args=[campaign.pk, run.pk, "approve"])
    seen, token = a.diff_sha256, _shown(client, campaign, run, a)
    variant_rerun(a, patch_for("a.py", "x", "rerun"))
    page = client.post(decide, {"variant": a.pk, "diff_hash": seen, "shown": token}, follow=True)
    assert page.status_code == 409
    assert "changed since you loaded the page" in page.content.decode()
    assert not RunReview.objects.filter(run=run, state=ReviewState.APPROVED).exists()
    token = _shown(client, campaign, run, a)
    client.post(
        decide, {"variant": a.pk, "diff_hash": a.diff_sha256, "comment": "ok", "shown": token}
    )
    assert RunReview.objects.get(run=run).state == ReviewState.APPROVED


def test_approval_needs_the_page_that_showed_the_diff(client, reviewer, run3):
    """A post naming the right hash but not coming from the page showing the diff (the queue,
    a script, another variant's page) is refused; the queue offers no approve at all."""
    campaign, run, (a, b, _c) = run3
    _login(client, reviewer)
    queue = client.get(reverse("review-queue", args=[campaign.pk])).content.decode()
    assert "/approve/" not in queue and 'data-key="a"' not in queue
    decide = reverse("review-decide", args=[campaign.pk, run.pk, "approve"])
    page = client.post(decide, {"variant": a.pk, "diff_hash": a.diff_sha256}, follow=True)
    assert page.status_code == 422 and "page that shows this diff" in page.content.decode()
    other = _shown(client, campaign, run, b)  # shown b, approving a
    page = client.post(decide, {"variant": a.pk, "diff_hash": a.diff_sha256, "shown": other})
    assert page.status_code == 422
    assert not RunReview.objects.filter(run=run, state=ReviewState.APPROVED).exists()


def test_a_decision_advances_to_the_next_change_and_can_be_undone(client, reviewer, manager):
    campaign = campaign_make(owner=manager, variants=("a",))
    runs = [run_make(campaign=campaign) for _ in range(3)]
    variants = [
        variant_make(run=r, name="a", patch=patch_for("f.py", "x", f"y{i}"))
        for i, r in enumerate(runs)
    ]
    _login(client, reviewer)
    decide = reverse("review-decide", args=[campaign.pk, runs[0].pk, "approve"])
    token = _shown(client, campaign, runs[0], variants[0])
    post = {"variant": variants[0].pk, "diff_hash": variants[0].diff_sha256, "shown": token}
    response = client.post(decide, post)
    decision = Decision.objects.get(run=runs[0], kind="approve")
    nxt = reverse("review-compare", args=[campaign.pk, runs[1].pk])
    assert response.status_code == 302 and response["Location"] == f"{nxt}?decided={decision.pk}"
    html = client.get(response["Location"]).content.decode()
    assert 'data-testid="undo-bar"' in html and runs[0].repository.name in html
    undo = reverse("review-undo", args=[campaign.pk, decision.pk])
    assert client.post(undo).status_code == 302
    decision.refresh_from_db()
    assert decision.withdrawn_at is not None and decision.withdrawn_by == reviewer  # kept
    history = client.get(reverse("review-compare", args=[campaign.pk, runs[0].pk])).content
    assert b'data-testid="withdrawn"' in history  # shown in the run's history, marked undone
    review = RunReview.objects.get(run=runs[0])
    assert review.state == ReviewState.PICKED and review.approved_hash == ""
    event = json.loads(AuditEvent.objects.get(action="review.decision.withdrawn").body)
    assert event["payload"]["decision_id"] == decision.pk
    assert event["payload"]["kind"] == "approve"
    # Undone once is undone: a second post is refused, and so is someone else's decision.
    assert client.post(undo).status_code == 409
    client.logout()
    _login(client, user_make(role="reviewer", username="rita"))
    other = Decision.objects.filter(run=runs[0], withdrawn_at__isnull=True).first()
    refused = client.post(reverse("review-undo", args=[campaign.pk, other.pk]))
    assert refused.status_code == 403


def test_four_eyes_on_the_page_and_outsiders_get_404(client, manager, outsider, run3):
    campaign, run, (a, *_r) = run3
    _login(client, manager)
    decide = reverse("review-decide", args=[campaign.pk, run.pk, "approve"])
    page = client.post(decide, {"variant": a.pk, "diff_hash": a.diff_sha256}, follow=True)
    assert page.status_code == 403
    assert "Four-eyes rule: you launched this campaign" in page.content.decode()
    # Recorded once, as the refused approval it is.
    denied = AuditEvent.objects.filter(outcome="denied")
    assert [e.action for e in denied] == ["review.change.approved"]
    assert not RunReview.objects.filter(run=run, state=ReviewState.APPROVED).exists()
    # Picking is a reviewer's job: the manager's role does not allow it.
    pick = reverse("review-decide", args=[campaign.pk, run.pk, "pick"])
    assert client.post(pick, {"variant": a.pk, "diff_hash": a.diff_sha256}).status_code == 403
    client.logout()
    _login(client, outsider)
    assert client.get(reverse("review-compare", args=[campaign.pk, run.pk])).status_code == 404


PAGES = ("review-dashboard", "review-queue")


def _queries(client, name, campaign):
    cache.clear()  # count the uncached path (the burndown series is cached between moves)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(reverse(name, args=[campaign.pk]))
    assert response.status_code == 200
    return len(ctx.captured_queries), response.content.decode()


def test_campaign_page_and_review_queue_queries_do_not_grow_with_runs(client, manager, reviewer):
    small = campaign_bulk_make(owner=manager, runs=100)
    big = campaign_bulk_make(owner=manager, runs=10_000)
    assert RepoRun.objects.filter(campaign=big).count() == 10_000
    _login(client, reviewer)
    for name in PAGES:
        _queries(client, name, small)  # warm caches (session, content types)
        _queries(client, name, big)  # and fold the big campaign's count deltas (campaigns.counters)
        n_small, _ = _queries(client, name, small)
        n_big, html = _queries(client, name, big)
        assert n_big == n_small, f"{name}: {n_small} queries at 100 runs, {n_big} at 10,000"
        assert n_big <= 20
    _, html = _queries(client, "review-queue", big)
    assert "page 1 of 180" in html  # 9,000 succeeded runs, 50 a page
    _, html = _queries(client, "review-dashboard", big)
    assert "<svg" in html and 'data-testid="cluster"' in html
    chart = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "<script" not in chart  # the CSP refuses inline scripts
    assert 'data-testid="next-up"' in html  # the reviewer's queue, on the dashboard
    big_run = RepoRun.objects.filter(campaign=big, state="succeeded").last()
    small_run = RepoRun.objects.filter(campaign=small, state="succeeded").last()
    counts = []
    for c, r in ((small, small_run), (big, big_run)):
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(reverse("review-compare", args=[c.pk, r.pk])).status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1]


def test_burndown_counts_finished_runs_and_retries(manager):
    campaign = campaign_make(owner=manager)
    start = campaign.launched_at
    runs = [run_make(campaign=campaign) for _ in range(4)]

    def move(run, a, b, seconds):
        RunTransition.objects.create(
            run=run,
            campaign=campaign,
            from_state=a,
            to_state=b,
            at=start + timedelta(seconds=seconds),
        )

    move(runs[0], "running", "succeeded", 10)
    move(runs[1], "running", "failed", 20)
    move(runs[1], "failed", "pending", 30)  # retried: remaining goes back up
    move(runs[2], "running", "succeeded", 40)
    series = burndown(campaign=campaign, points=4)
    assert series[0] == (0.0, 4)
    assert [y for _, y in series] == [4, 3, 2, 3, 2]
    assert series[-1][0] == pytest.approx(40)


def test_bulk_page_only_reads_and_groups_from_digests_kept_at_write_time(client, manager, reviewer):
    campaign = campaign_make(owner=manager, variants=("only",))
    for i in range(3):
        run = run_make(campaign=campaign)
        variant_make(run=run, name="only", patch=patch_for("b.py", "p", "q", line=i + 1))
    _login(client, reviewer)
    url = reverse("review-bulk", args=[campaign.pk])
    client.get(url)  # warm the session
    with CaptureQueriesContext(connection) as ctx:
        html = client.get(url, {"variant": "only"}).content.decode()
    writes = [
        q["sql"]
        for q in ctx.captured_queries
        if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
        and "django_session" not in q["sql"]
    ]
    assert writes == []
    assert 'data-testid="group-count">3<' in html


def test_htmx_swaps_get_the_partial_their_target_names(client, reviewer, run3):
    campaign, run, (a, _b, _c) = run3
    _login(client, reviewer)
    url = reverse("review-compare", args=[campaign.pk, run.pk])
    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "viewer"}
    viewer = client.get(url, {"variant": a.pk, "mode": "split"}, **htmx)
    html = viewer.content.decode()
    assert html.lstrip().startswith('<div id="viewer"') and "diff-split" in html
    assert 'data-testid="variants"' not in html
    assert "HX-Target" in viewer["Vary"]
    # Another target (or none) gets the whole page.
    page = client.get(url, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="elsewhere").content.decode()
    assert 'data-testid="variants"' in page and "<html" in page
    live = client.get(
        reverse("review-dashboard", args=[campaign.pk]),
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="dashboard-live",
    ).content.decode()
    assert live.lstrip().startswith('<div id="dashboard-live"')
    listing = client.get(
        reverse("review-changesets", args=[campaign.pk]),
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="changesets",
    ).content.decode()
    assert listing.lstrip().startswith('<div id="changesets"') and "<html" not in listing


def test_a_refused_decision_from_htmx_lands_in_the_notices(client, reviewer, run3):
    campaign, run, _variants = run3
    _login(client, reviewer)
    reject = reverse("review-decide", args=[campaign.pk, run.pk, "reject"])
    r = client.post(reject, {"comment": " "}, HTTP_HX_REQUEST="true")
    assert r.status_code == 422 and r["HX-Retarget"] == "#notices"
    assert "say why the change is rejected" in r.content.decode()
    assert not RunReview.objects.filter(run=run, state=ReviewState.REJECTED).exists()
