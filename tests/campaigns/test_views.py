"""Campaign pages: list, new from YAML with inline errors, live counts, escaped run detail."""

import pytest

from campaigns.models import Campaign, RepoRun, Variant, VariantState
from campaigns.services import campaign_create
from tests.factories import repos_make, spec_for

pytestmark = pytest.mark.shapes("embedded", "production")


def test_new_campaign_validates_inline_and_creates_a_draft(client, manager):
    client.force_login(manager)
    page = client.get("/campaigns/new/")
    assert page.status_code == 200 and b'hx-post="/campaigns/validate/"' in page.content
    bad = client.post(
        "/campaigns/validate/", {"spec": "name: x\nvariants: 3\n"}, HTTP_HX_REQUEST="true"
    )
    assert b"variants: must be a non-empty list of {name, env} (line 2)" in bad.content
    assert b"repos: is required" in bad.content
    tag, _ = repos_make(1)
    good = client.post("/campaigns/validate/", {"spec": spec_for(tag, name="c1")})
    assert b"The spec is valid." in good.content
    refused = client.post("/campaigns/new/", {"spec": "- a list\n"})
    assert refused.status_code == 200 and b"must be a mapping" in refused.content
    assert not Campaign.objects.exists()
    created = client.post("/campaigns/new/", {"spec": spec_for(tag, name="c1")}, follow=True)
    assert b"Campaign c1 created as a draft." in created.content
    assert Campaign.objects.get().owner == manager


def test_reviewer_sees_campaigns_but_cannot_create_or_launch(client, manager, reviewer):
    tag, _ = repos_make(1)
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="c1"))
    client.force_login(reviewer)
    assert b'href="/campaigns/"' in client.get("/").content
    listing = client.get("/campaigns/")
    assert b"c1" in listing.content and b"New campaign" not in listing.content
    assert client.get("/campaigns/new/").status_code == 403
    assert client.post(f"/campaigns/{campaign.pk}/launch/").status_code == 403
    detail = client.get(f"/campaigns/{campaign.pk}/")
    assert detail.status_code == 200 and b'data-testid="launch"' not in detail.content


def test_outsider_gets_404(client, manager, outsider):
    tag, _ = repos_make(1)
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="c1"))
    client.force_login(outsider)
    assert client.get(f"/campaigns/{campaign.pk}/").status_code == 404


def test_detail_counts_poll_and_run_detail_escapes_the_diff(
    client, manager, django_capture_on_commit_callbacks
):
    tag, _ = repos_make(2)
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="c1"))
    client.force_login(manager)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/campaigns/{campaign.pk}/launch/", follow=True)
    page = client.get(f"/campaigns/{campaign.pk}/")
    assert b'hx-trigger="every 2s"' in page.content
    # max_parallel (4) counts sandboxes: one run of three variants at once, the other waits
    assert b'data-testid="count-queued">1<' in page.content
    assert b'data-testid="count-pending">1<' in page.content
    live = client.get(
        f"/campaigns/{campaign.pk}/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="campaign-live"
    )
    assert live.content.lstrip().startswith(b'<div id="campaign-live"')
    run = RepoRun.objects.filter(campaign=campaign).first()
    Variant.objects.create(
        run=run,
        name="standard",
        state=VariantState.COMPLETED,
        patch=b"+<script>alert('x')</script>\n",
        output_tail="<img src=x onerror=alert(1)>",
    )
    detail = client.get(f"/campaigns/{campaign.pk}/runs/{run.pk}/")
    assert b"<script>alert" not in detail.content and b"<img src=x" not in detail.content
    assert b"&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in detail.content
