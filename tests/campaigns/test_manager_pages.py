"""The manager's pages without a browser: home (what needs me), list search/sort/pages, the runs
table's error column, the sandbox list's search and the sandbox page's commands, the edit page's
revision plan, and the live check agreeing with the submit."""

import pytest

from campaigns.models import Campaign, CampaignState, RunState
from sandboxes.models import Sandbox, SandboxCommand
from tests.factories import campaign_make, repos_make, run_make, spec_for, variant_make

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db]

SETUP_ERROR = "setup[0] `make deps` exited with 2\nmake: *** No rule to make target 'deps'"


def test_home_shows_my_running_campaigns_failures_and_the_review_queue(client, manager, reviewer):
    mine = campaign_make(owner=manager)
    run_make(campaign=mine, state=RunState.FAILED)
    done = run_make(campaign=mine)
    variant_make(run=done, name="a", patch=b"diff --git a/x b/x\n")
    client.force_login(manager)
    page = client.get("/").content.decode()
    assert mine.name in page and "1 failed run" in page
    assert 'data-testid="home-queue"' not in page  # managers do not review
    client.force_login(reviewer)
    page = client.get("/").content.decode()
    assert 'data-testid="queue-total">1<' in page and 'data-testid="home-mine"' not in page


def test_campaign_list_searches_sorts_and_pages(client, manager):
    made = [campaign_make(owner=manager) for _ in range(30)]
    Campaign.objects.filter(pk=made[4].pk).update(description="the needle")
    client.force_login(manager)
    page = client.get("/campaigns/?q=needle").content.decode()
    assert page.count('data-testid="campaign-row"') == 1 and made[4].name in page
    page = client.get("/campaigns/?sort=name").content.decode()
    assert page.count('data-testid="campaign-row"') == 25 and "page 1 of 2" in page
    second = client.get("/campaigns/?sort=name&page=2").content.decode()
    assert second.count('data-testid="campaign-row"') == 5
    # an unknown sort falls back to the default instead of ordering by any column
    assert client.get("/campaigns/?sort=owner__password").status_code == 200
    rows = client.get(
        "/campaigns/?q=review", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="campaign-rows"
    )
    assert rows.content.lstrip().startswith(b'<div id="campaign-rows">')


def test_runs_table_names_the_failing_step_exit_code_and_group(client, manager):
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign, state=RunState.FAILED)
    run.error, run.error_signature, run.error_summary = SETUP_ERROR, "abc123def456", "make: N"
    run.save()
    client.force_login(manager)
    page = client.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert "<strong>setup[0]</strong> exit 2 <code>make deps</code>" in page
    assert 'href="?signature=abc123def456"' in page


def test_sandbox_page_shows_the_users_step_and_the_failing_one(client, manager, admin_user):
    campaign = campaign_make(owner=manager)
    campaign.spec.update(
        setup=[{"run": "make deps"}], transform=[{"run": "sed -i s/a/b/ x"}], validate=[]
    )
    campaign.save()
    run = run_make(campaign=campaign, state=RunState.FAILED)
    run.error, run.error_signature = SETUP_ERROR, "abc123def456"
    run.save()
    sandbox = Sandbox.objects.create(
        backend="bwrap", state="terminated", campaign_id=campaign.pk, run_id=run.pk
    )
    SandboxCommand.objects.create(
        sandbox=sandbox, argv=["git", "clone", "file:///x"], exit_code=0, duration_ms=40
    )
    SandboxCommand.objects.create(
        sandbox=sandbox, argv=["bash", "-c", "make deps"], exit_code=2, duration_ms=1500
    )
    wrapper = '( __convoy_step=$1; set --; eval "$__convoy_step" ); status=$?'
    SandboxCommand.objects.create(
        sandbox=sandbox, argv=["bash", "-c", wrapper, "convoy-step", "sed -i s/a/b/ x"]
    )
    client.force_login(manager)
    page = client.get(f"/sandboxes/{sandbox.pk}/").content.decode()
    assert "__convoy_step" not in page and "convoy-step" not in page
    assert '<code data-testid="command-shown">sed -i s/a/b/ x</code>' in page
    assert '<code data-testid="command-step">setup[0]</code>' in page
    assert page.count('data-testid="failing-step"') == 1 and "exit 2" in page
    assert f"/campaigns/{campaign.pk}/?signature=abc123def456" in page
    assert 'data-duration-ms="1500"' in page and "data-local-time" in page
    assert 'hx-trigger="every 2s"' not in page  # terminated: nothing to poll

    client.force_login(admin_user)
    listed = client.get(f"/sandboxes/?all=1&q={campaign.pk}").content.decode()
    assert listed.count('data-testid="sandbox-row"') == 1
    none = client.get("/sandboxes/?all=1&q=nothing-like-it").content.decode()
    assert 'data-testid="sandbox-row"' not in none


def test_live_check_and_submit_refuse_an_unknown_tag_alike(client, manager):
    client.force_login(manager)
    spec = spec_for("no-such-tag", name="tagged")
    live = client.post("/campaigns/validate/", {"spec": spec}).content.decode()
    submit = client.post("/campaigns/new/", {"spec": spec}).content.decode()
    message = "no registered repository has the tag &#x27;no-such-tag&#x27;"
    assert message in live and message in submit
    assert not Campaign.objects.filter(name="tagged").exists()
    page = client.get("/campaigns/new/").content.decode()
    assert "name: my-campaign" in page and "data-spec-lines" in page


def test_edit_page_shows_the_revision_before_applying_it(client, manager):
    tag, _ = repos_make(1)
    source = spec_for(tag, name="edited")
    client.force_login(manager)
    client.post("/campaigns/new/", {"spec": source})
    campaign = Campaign.objects.get(name="edited")
    Campaign.objects.filter(pk=campaign.pk).update(state=CampaignState.COMPLETED)
    changed = source.replace("max_parallel: 4", "max_parallel: 2")
    page = client.post(f"/campaigns/{campaign.pk}/edit/", {"spec": changed}).content.decode()
    assert 'data-testid="revision-plan"' in page and "+max_parallel: 2" in page
    assert not campaign.revisions.exists()
    client.post(f"/campaigns/{campaign.pk}/edit/", {"spec": changed, "confirm": "1"})
    assert campaign.revisions.count() == 2
    assert Campaign.objects.get(pk=campaign.pk).max_parallel == 2
