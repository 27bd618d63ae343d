"""The text a change is published with (title, body, commit message, author) is what its
reviewer approved: shown beside Approve, bound to the approval, stored on the changeset.

Publishing read it from the campaign's spec when the push ran, so a revision after the
approval changed the pull request's title and the commit's text without anyone approving them.
"""

import json
import re

import pytest
from django.urls import reverse

from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import Campaign, RepoRun, RunState
from campaigns.revisions import campaign_revise
from campaigns.services import campaign_create, campaign_launch, campaign_update
from campaigns.spec import CampaignSpecError
from review import codehosts
from review.codehosts.github import GitHub
from review.models import Changeset
from review.services import changeset_push
from tests.factories import (
    PASSWORD,
    git,
    patch_for,
    remote_with_change,
    repos_make,
    run_make,
    spec_for,
    variant_make,
)

pytestmark = pytest.mark.shapes("embedded", "production")

TITLE = "Use assertEqual"  # the demo spec's changeset.title


def _launched(owner, name: str):
    """A campaign launched from the demo spec (its `changeset` names a branch and a title)."""
    tag, _ = repos_make(1)
    spec = spec_for(tag, name=name)
    campaign = campaign_launch(campaign=campaign_create(actor=owner, source=spec), actor=owner)
    RepoRun.objects.filter(campaign=campaign).update(state=RunState.CANCELLED)
    return spec, Campaign.objects.get(pk=campaign.pk)


def _event(action) -> dict:
    return json.loads(AuditEvent.objects.filter(action=action).latest("id").body)


def _page_form(client, campaign, run) -> dict:
    """The approve form's hidden fields, as the comparison page draws them."""
    html = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    fields = dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', html))
    assert "shown" in fields, "the page shows no approve form"
    return fields


def test_a_revision_changing_the_title_after_approval_is_refused_until_approved_again(
    client, tmp_path, monkeypatch, fake_github, manager, reviewer
):
    adapter = GitHub(api_url=fake_github.url, token="tok-publish", rate=1000)
    monkeypatch.setattr(codehosts, "codehost_for_remote", lambda url: (adapter, "acme/alpha"))
    spec, campaign = _launched(manager, "bind-title")
    bare, base, patch = remote_with_change(tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b"})
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    v = variant_make(run=run, name="standard", patch=patch)
    _, raw = token_create(user=reviewer, name="t", scope="write")
    api = f"/api/v1/review/campaigns/{campaign.pk}/runs/{run.pk}"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}", "content_type": "application/json"}

    # What the API client approves: the review says the text publishing would use.
    review = client.get(api, **auth).json()
    assert review["publish_text"]["title"] == TITLE
    old_hash = review["publish_hash"]
    approve = {"variant": "standard", "diff_hash": v.diff_sha256, "publish_hash": old_hash}
    assert client.post(f"{api}/approve", approve, **auth).status_code == 200
    assert _event("review.change.approved")["payload"]["publish_hash"] == old_hash

    # A revision (which re-runs nothing: the diff and its approval stay) changes the title.
    revised = spec.replace(f"title: {TITLE}", "title: Use assertEqual everywhere, now")
    campaign_revise(campaign=campaign, actor=manager, source=revised)

    refused = client.post(f"{api}/publish", **auth)
    assert refused.status_code == 409, refused.content
    assert "changeset.title" in refused.json()["detail"]
    assert [e["field"] for e in refused.json()["errors"]] == ["changeset.title"]
    assert "approve it again" in refused.json()["detail"]
    assert not Changeset.objects.filter(run=run).exists()
    review = client.get(api, **auth).json()
    assert review["publish_text_changes"] == ["changeset.title"]
    # An approval with the text as read before the revision is refused too.
    stale = client.post(f"{api}/approve", approve, **auth)
    assert stale.status_code == 409
    assert [e["field"] for e in stale.json()["errors"]] == ["publish_hash"]

    # The page says so beside Approve, shows the new title and offers Approve, not Publish.
    assert client.login(username=reviewer.username, password=PASSWORD)
    page = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    assert 'data-testid="publish-text-changed"' in page and "changeset.title" in page
    assert "Use assertEqual everywhere, now" in page
    assert 'data-testid="approve"' in page and 'data-testid="publish"' not in page
    decide = reverse("review-decide", args=[campaign.pk, run.pk, "publish"])
    page_refused = client.post(decide)
    assert page_refused.status_code == 409 and b"changeset.title" in page_refused.content
    assert not Changeset.objects.filter(run=run).exists()

    # Approved again from the page that shows the new text: published with it.
    form = _page_form(client, campaign, run)
    approve_url = reverse("review-decide", args=[campaign.pk, run.pk, "approve"])
    assert client.post(approve_url, form).status_code == 302
    assert client.post(decide).status_code == 302
    changeset = Changeset.objects.get(run=run)
    assert changeset.publish_text["title"] == "Use assertEqual everywhere, now"
    queued = _event("review.change.published")["payload"]
    assert queued["publish_hash"] == changeset.publish_hash == form["publish_hash"]
    assert queued["publish_bound_by"] == "approval"

    # A later revision does not reach a change already queued: the push uses the stored text.
    campaign_revise(
        campaign=Campaign.objects.get(pk=campaign.pk),
        actor=manager,
        source=revised.replace("Use assertEqual everywhere, now", "Something else"),
    )
    pushed = changeset_push(changeset_id=changeset.pk)
    assert pushed.state == "open", pushed.error
    (pr,) = fake_github.pulls["acme/alpha"]
    assert pr["title"] == "Use assertEqual everywhere, now"
    log = git(bare, "log", "-1", "--format=%an <%ae>|%s", "convoy/assert-equal").decode()
    assert log.strip() == (
        "Convoy <convoy@localhost>|Replace deprecated assertEquals with assertEqual"
    )


def test_a_revision_changing_only_the_branch_after_approval_is_refused_until_approved_again(
    client, tmp_path, monkeypatch, fake_github, manager, reviewer
):
    """The branch was read from the live spec when publishing: a manager's revision of only
    `changeset.branch` after the approval pushed the approved change to a branch the reviewer
    never saw. It is bound with the text now, shown beside Approve."""
    adapter = GitHub(api_url=fake_github.url, token="tok-publish", rate=1000)
    monkeypatch.setattr(codehosts, "codehost_for_remote", lambda url: (adapter, "acme/alpha"))
    spec, campaign = _launched(manager, "bind-branch")
    bare, base, patch = remote_with_change(tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b"})
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    v = variant_make(run=run, name="standard", patch=patch)
    _, raw = token_create(user=reviewer, name="t", scope="write")
    api = f"/api/v1/review/campaigns/{campaign.pk}/runs/{run.pk}"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}", "content_type": "application/json"}
    review = client.get(api, **auth).json()
    assert review["publish_text"]["branch"] == "convoy/assert-equal"
    approve = {"variant": "standard", "diff_hash": v.diff_sha256}
    approve["publish_hash"] = review["publish_hash"]
    assert client.post(f"{api}/approve", approve, **auth).status_code == 200

    revised = spec.replace("branch: convoy/assert-equal", "branch: deploy/production")
    assert revised != spec
    campaign_revise(campaign=campaign, actor=manager, source=revised)

    refused = client.post(f"{api}/publish", **auth)
    assert refused.status_code == 409, refused.content
    assert [e["field"] for e in refused.json()["errors"]] == ["changeset.branch"]
    assert not Changeset.objects.filter(run=run).exists()
    assert client.get(api, **auth).json()["publish_text_changes"] == ["changeset.branch"]

    # The page shows the new branch beside Approve; approved again, it is pushed there.
    assert client.login(username=reviewer.username, password=PASSWORD)
    page = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    assert re.search(r'data-testid="publish-branch"><code>deploy/production<', page)
    assert 'data-testid="publish-text-changed"' in page and "changeset.branch" in page
    approve_url = reverse("review-decide", args=[campaign.pk, run.pk, "approve"])
    assert client.post(approve_url, _page_form(client, campaign, run)).status_code == 302
    decide = reverse("review-decide", args=[campaign.pk, run.pk, "publish"])
    assert client.post(decide).status_code == 302
    changeset = changeset_push(changeset_id=Changeset.objects.get(run=run).pk)
    assert changeset.state == "open", changeset.error
    assert changeset.branch == changeset.publish_text["branch"] == "deploy/production"
    branches = git(bare, "for-each-ref", "--format=%(refname:short)", "refs/heads").decode()
    assert "deploy/production" in branches.split() and "convoy/assert-equal" not in branches

    # A published change keeps its branch (its pull request's): approved again with another
    # one, publishing is refused rather than pushing where the approval did not say.
    campaign_revise(campaign=Campaign.objects.get(pk=campaign.pk), actor=manager, source=spec)
    assert client.post(approve_url, _page_form(client, campaign, run)).status_code == 302
    kept = client.post(decide)
    assert kept.status_code == 409 and b"keeps its branch" in kept.content
    assert Changeset.objects.get(run=run).branch == "deploy/production"


def test_the_text_to_publish_is_shown_beside_approve(client, manager, reviewer):
    manager.email = "m@example.com"
    manager.save()
    tag, _ = repos_make(1)
    spec = spec_for(tag, name="shown-text").replace(
        "  commit_message: Replace deprecated assertEquals with assertEqual",
        "  commit_message: Replace assertEquals\n"
        "  body: 'Made by <script>alert(1)</script> Convoy'\n"
        "  author: Mary Manager <m@example.com>",
    )
    campaign = campaign_launch(campaign=campaign_create(actor=manager, source=spec), actor=manager)
    RepoRun.objects.filter(campaign=campaign).update(state=RunState.CANCELLED)
    run = run_make(campaign=campaign)
    variant_make(run=run, name="standard", patch=patch_for("x.py", "1", "2"))
    assert client.login(username=reviewer.username, password=PASSWORD)
    html = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    decision = html[html.index('data-testid="decision"') :]
    shown = decision[: decision.index('data-testid="approve"')]
    assert re.search(r'data-testid="publish-title">\s*Use assertEqual\s*<', shown)
    assert re.search(r'data-testid="publish-message">Replace assertEquals<', shown)
    assert "Mary Manager &lt;m@example.com&gt;" in shown
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in shown
    assert re.search(r'<details data-testid="publish-body"><summary>', shown)  # collapsed
    assert 'aria-labelledby="publish-text-heading"' in shown


def _with_author(spec: str, author: str) -> str:
    return spec.replace("  title: Use assertEqual", f"  title: Use assertEqual\n  author: {author}")


def test_a_spec_names_as_author_only_its_editor_or_the_installations_bot(
    client, manager, admin_user
):
    """The code host credits the commit to whoever `changeset.author` names: any manager could
    name anyone. Now a manager names themselves or the bot identity; an admin names anyone,
    and what an admin set survives a manager's later edit."""
    manager.email = "m@example.com"
    manager.save()
    tag, _ = repos_make(1)
    spec = spec_for(tag, name="authors")

    ceo = _with_author(spec, "The CEO <ceo@example.com>")
    with pytest.raises(CampaignSpecError) as refused:
        campaign_create(actor=manager, source=ceo)
    assert [e.path for e in refused.value.errors] == ["changeset.author"]
    assert "<m@example.com>" in refused.value.errors[0].message
    _, raw = token_create(user=manager, name="t", scope="write")
    response = client.post(
        "/api/v1/campaigns",
        {"yaml": ceo},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["changeset.author"]
    with pytest.raises(CampaignSpecError) as malformed:
        campaign_create(actor=manager, source=_with_author(spec, "just a name"))
    assert [e.path for e in malformed.value.errors] == ["changeset.author"]
    assert not Campaign.objects.exists()

    mine = campaign_create(actor=manager, source=_with_author(spec, "Mary <M@example.com>"))
    bot = _with_author(spec.replace("name: authors", "name: authors-bot"), "Bot <convoy@localhost>")
    assert campaign_create(actor=manager, source=bot).spec["changeset"]["author"]
    mine.delete()

    # An admin names someone else; a manager's edit that keeps that author is accepted, one
    # that names another person is not.
    draft = campaign_create(actor=admin_user, source=ceo)
    kept = ceo.replace("Replace the deprecated", "Replace, at last, the deprecated")
    campaign_update(campaign=draft, actor=manager, source=kept)
    assert Campaign.objects.get(pk=draft.pk).spec["changeset"]["author"].startswith("The CEO")
    with pytest.raises(CampaignSpecError) as changed:
        campaign_update(
            campaign=draft, actor=manager, source=_with_author(spec, "Nina <n@example.com>")
        )
    assert [e.path for e in changed.value.errors] == ["changeset.author"]


def test_bulk_approval_shows_the_text_and_refuses_once_a_revision_changed_it(
    client, manager, reviewer
):
    from review.models import Decision

    spec, campaign = _launched(manager, "bulk-text")
    runs = [run_make(campaign=campaign) for _ in range(2)]
    for run in runs:
        variant_make(run=run, name="standard", patch=patch_for("x.py", "1", "2"))
    assert client.login(username=reviewer.username, password=PASSWORD)
    url = reverse("review-bulk", args=[campaign.pk])
    html = client.get(url, {"variant": "standard"}).content.decode()
    form = html[html.index('action="' + reverse("review-bulk-approve", args=[campaign.pk])) :]
    assert re.search(r'data-testid="publish-title">\s*Use assertEqual\s*<', form)
    fields = dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', form))
    post = {**fields, "run_ids": [r.pk for r in runs]}

    campaign_revise(
        campaign=campaign, actor=manager, source=spec.replace(f"title: {TITLE}", "title: Other")
    )
    refused = client.post(reverse("review-bulk-approve", args=[campaign.pk]), post)
    assert refused.status_code == 409 and b"text to publish" in refused.content
    assert not Decision.objects.filter(kind="approve").exists()


def test_a_published_change_whose_text_a_revision_changed_is_queued_apart_and_its_pr_updated(
    client, tmp_path, monkeypatch, fake_github, manager, reviewer
):
    """A published change could be approved again with a revision's new text, but its pull
    request kept the old title and body, and the queue still counted it as approved. Now the
    queue shows it as "approved, text changed: needs approval", and publishing its new
    approval updates the same pull request through the code host."""
    adapter = GitHub(api_url=fake_github.url, token="tok-publish", rate=1000)
    monkeypatch.setattr(codehosts, "codehost_for_remote", lambda url: (adapter, "acme/alpha"))
    spec, campaign = _launched(manager, "update-pr")
    bare, base, patch = remote_with_change(tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b"})
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    run_make(campaign=campaign)  # another run, never decided: not counted as text changed
    variant_make(run=run, name="standard", patch=patch)
    assert client.login(username=reviewer.username, password=PASSWORD)
    approve_url = reverse("review-decide", args=[campaign.pk, run.pk, "approve"])
    decide = reverse("review-decide", args=[campaign.pk, run.pk, "publish"])
    queue = reverse("review-queue", args=[campaign.pk])

    assert client.post(approve_url, _page_form(client, campaign, run)).status_code == 302
    assert client.post(decide).status_code == 302
    changeset = changeset_push(changeset_id=Changeset.objects.get(run=run).pk)
    assert changeset.state == "open", changeset.error
    first_commit = changeset.commit
    (pr,) = fake_github.pulls["acme/alpha"]
    assert (pr["title"], pr["body"]) == (TITLE, campaign.description)
    assert 'data-testid="filter-text_changed">approved, text changed: needs approval (0)' in (
        client.get(queue).content.decode()
    )

    # A revision changes the title, the body and the commit message.
    revised = spec.replace(f"title: {TITLE}", "title: Use assertEqual, revised").replace(
        "  commit_message: Replace deprecated assertEquals with assertEqual",
        "  commit_message: Replace assertEquals, revised\n  body: Why it changed",
    )
    campaign_revise(campaign=campaign, actor=manager, source=revised)

    page = client.get(f"{queue}?which=text_changed").content.decode()
    assert 'data-testid="filter-text_changed">approved, text changed: needs approval (1)' in page
    assert page.count('data-testid="queue-row"') == 1 and "approved, text changed" in page
    published = client.get(f"{queue}?which=published").content.decode()
    assert re.search(r'data-testid="row-status">approved, text changed: needs approval<', published)
    board = client.get(reverse("review-dashboard", args=[campaign.pk])).content.decode()
    assert re.search(r'data-testid="review-text-changed">1<', board)
    # Not published with a text nobody approved; the pull request is untouched.
    refused = client.post(decide)
    assert refused.status_code == 409 and b"changeset.title" in refused.content
    assert Changeset.objects.get(run=run).publish_hash == changeset.publish_hash

    # Approved again from the page that shows the new text; the page offers the update.
    assert client.post(approve_url, _page_form(client, campaign, run)).status_code == 302
    assert "(0)" in client.get(f"{queue}?which=text_changed").content.decode()
    compare = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    assert 'data-testid="publish-text-update"' in compare
    assert client.post(decide).status_code == 302
    queued = Changeset.objects.get(run=run)
    assert queued.state == "queued" and queued.publish_text["title"] == "Use assertEqual, revised"
    event = _event("review.change.published")["payload"]
    assert event["replaces_publish_hash"] == changeset.publish_hash
    assert event["publish_hash"] == queued.publish_hash

    updated = changeset_push(changeset_id=queued.pk)
    assert updated.state == "open", updated.error
    (pr,) = fake_github.pulls["acme/alpha"]  # the same pull request, updated
    assert (pr["title"], pr["body"]) == ("Use assertEqual, revised", "Why it changed")
    assert (updated.pr_number, updated.pr_url) == (changeset.pr_number, changeset.pr_url)
    assert updated.commit != first_commit
    log = git(bare, "log", "-1", "--format=%s", "convoy/assert-equal").decode()
    assert log.strip() == "Replace assertEquals, revised"
    # Published with the approved text, nothing more to update.
    compare = client.get(reverse("review-compare", args=[campaign.pk, run.pk])).content.decode()
    assert 'data-testid="publish-text-update"' not in compare
    assert client.post(decide).status_code == 302
    assert Changeset.objects.get(run=run).state == "open"


def test_a_text_republished_while_the_first_push_runs_is_pushed_after_it(
    client, tmp_path, monkeypatch, fake_github, manager, reviewer
):
    """The first push's end marked the row open with its old text while the row said the new
    text was published; the new text's push then did nothing, and the PR kept the old title.
    Now the first push records its commit, leaves the row queued, and the second one pushes
    the new text and updates the pull request."""
    from review import services

    adapter = GitHub(api_url=fake_github.url, token="tok-publish", rate=1000)
    monkeypatch.setattr(codehosts, "codehost_for_remote", lambda url: (adapter, "acme/alpha"))
    spec, campaign = _launched(manager, "race-pr")
    bare, base, patch = remote_with_change(tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b"})
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    variant_make(run=run, name="standard", patch=patch)
    assert client.login(username=reviewer.username, password=PASSWORD)
    approve_url = reverse("review-decide", args=[campaign.pk, run.pk, "approve"])
    decide = reverse("review-decide", args=[campaign.pk, run.pk, "publish"])
    assert client.post(approve_url, _page_form(client, campaign, run)).status_code == 302
    assert client.post(decide).status_code == 302
    changeset = Changeset.objects.get(run=run)
    first_text_hash = changeset.publish_hash

    push = services.change_push
    republished = []

    def push_while_republished(**kw):
        if not republished:  # while the first push runs: revised, approved again, published
            republished.append(True)
            revised = spec.replace(f"title: {TITLE}", "title: Revised title").replace(
                "  commit_message: Replace deprecated assertEquals with assertEqual",
                "  commit_message: Revised message",
            )
            campaign_revise(campaign=campaign, actor=manager, source=revised)
            assert client.post(approve_url, _page_form(client, campaign, run)).status_code == 302
            assert client.post(decide).status_code == 302
        return push(**kw)

    monkeypatch.setattr(services, "change_push", push_while_republished)
    first = changeset_push(changeset_id=changeset.pk)
    assert first.state == "queued" and first.publish_text["title"] == "Revised title"
    assert first.commit == git(bare, "rev-parse", "convoy/assert-equal").decode().strip()
    superseded = _event("review.change.published")
    assert superseded["payload"]["status"] == "superseded"
    assert superseded["payload"]["publish_hash"] == first_text_hash
    assert superseded["payload"]["superseded_by_publish_hash"] == first.publish_hash

    second = changeset_push(changeset_id=changeset.pk)
    assert second.state == "open", second.error
    assert second.commit != first.commit
    (pr,) = fake_github.pulls["acme/alpha"]
    assert pr["title"] == second.publish_text["title"] == "Revised title"
    log = git(bare, "log", "-1", "--format=%s", "convoy/assert-equal").decode()
    assert log.strip() == "Revised message"
    assert _event("review.change.published")["payload"]["publish_hash"] == second.publish_hash


def test_the_api_queue_lists_text_changed_and_publish_all_updates_the_pull_request(
    client, tmp_path, monkeypatch, fake_github, manager, reviewer
):
    """The pages listed "approved, text changed: needs approval" apart; the API had no such
    filter. And "Publish all" took only changes never published (or failed): one approved
    again with a revision's text kept its old pull request title until someone published it
    alone. Now the API's queue has the filter, and publish-all updates such pull requests."""
    adapter = GitHub(api_url=fake_github.url, token="tok-publish", rate=1000)
    monkeypatch.setattr(codehosts, "codehost_for_remote", lambda url: (adapter, "acme/alpha"))
    spec, campaign = _launched(manager, "publish-all-text")
    bare, base, patch = remote_with_change(tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b"})
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    variant_make(run=run, name="standard", patch=patch)
    _, raw = token_create(user=reviewer, name="t", scope="write")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}", "content_type": "application/json"}
    api = f"/api/v1/review/campaigns/{campaign.pk}"
    assert client.login(username=reviewer.username, password=PASSWORD)
    approve_url = reverse("review-decide", args=[campaign.pk, run.pk, "approve"])
    queue = reverse("review-queue", args=[campaign.pk])

    def listed(which: str) -> tuple[int, list[tuple[int, str]]]:
        page = client.get(f"{api}/queue?which={which}", **auth)
        assert page.status_code == 200, page.content
        return page.json()["count"], [(r["run_id"], r["status"]) for r in page.json()["items"]]

    assert client.post(approve_url, _page_form(client, campaign, run)).status_code == 302
    assert listed("approved") == (1, [(run.pk, "approved")])
    assert client.post(f"{api}/publish", **auth).json() == {"queued": [run.pk], "refused": []}
    changeset = changeset_push(changeset_id=Changeset.objects.get(run=run).pk)
    assert changeset.state == "open", changeset.error
    assert listed("text_changed") == (0, [])

    revised = spec.replace(f"title: {TITLE}", "title: Use assertEqual, revised")
    campaign_revise(campaign=campaign, actor=manager, source=revised)
    text_changed = (1, [(run.pk, "approved, text changed: needs approval")])
    assert listed("text_changed") == text_changed
    assert listed("published") == text_changed
    # Not approved again: publish-all leaves it (and its pull request) alone.
    assert client.post(f"{api}/publish", **auth).json() == {"queued": [], "refused": []}
    unknown = client.get(f"{api}/queue?which=stale", **auth)
    assert unknown.status_code == 422 and "which" in unknown.content.decode()
    schema = client.get("/api/v1/openapi.json", **auth).json()
    (param,) = [
        p
        for p in schema["paths"]["/api/v1/review/campaigns/{campaign_id}/queue"]["get"][
            "parameters"
        ]
        if p["name"] == "which"
    ]
    assert "text_changed" in json.dumps(param)

    # Approved again: the page's Publish all counts it and says it updates a pull request.
    assert client.post(approve_url, _page_form(client, campaign, run)).status_code == 302
    assert listed("text_changed") == (0, [])
    page = client.get(f"{queue}?which=approved").content.decode()
    assert "Publish all 1 approved change(s)" in page
    assert re.search(r'data-testid="publish-approved-updates">including 1 already published', page)
    assert client.post(f"{api}/publish", **auth).json() == {"queued": [run.pk], "refused": []}
    queued = Changeset.objects.get(run=run)
    assert queued.state == "queued" and queued.publish_text["title"] == "Use assertEqual, revised"
    event = _event("review.change.published")["payload"]
    assert event["replaces_publish_hash"] == changeset.publish_hash
    assert event["publish_hash"] == queued.publish_hash
    assert AuditEvent.objects.filter(action="review.change.published").count() == 3

    updated = changeset_push(changeset_id=queued.pk)
    assert updated.state == "open", updated.error
    (pr,) = fake_github.pulls["acme/alpha"]
    assert pr["title"] == "Use assertEqual, revised"
    assert updated.pr_number == changeset.pr_number
    # Published as approved: nothing more to queue, and no button for nothing.
    assert client.post(f"{api}/publish", **auth).json() == {"queued": [], "refused": []}
    assert (
        'data-testid="publish-approved"'
        not in client.get(f"{queue}?which=approved").content.decode()
    )
