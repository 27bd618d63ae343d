"""Changesets: publishing on a real Celery worker; PR state refreshed from a fake GitHub."""

import pytest

from review import codehosts
from review.codehosts.github import GitHub
from review.models import Changeset
from review.services import change_approve, change_publish, changeset_push, changesets_refresh
from tests.factories import campaign_make, git, remote_with_change, run_make, variant_make
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")


def test_publish_runs_on_a_real_worker_and_pushes_the_branch(
    tmp_path, manager, reviewer, celery_worker
):
    bare, base, patch = remote_with_change(
        tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b\n"}
    )
    campaign = campaign_make(owner=manager, variants=("only",))
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    v = variant_make(run=run, name="only", patch=patch)
    change_approve(run=run, actor=reviewer, variant=v, diff_hash=v.diff_sha256)
    changeset = change_publish(run=run, actor=reviewer)
    done = wait_for(
        lambda: Changeset.objects.filter(pk=changeset.pk).exclude(state="queued").first(),
        timeout=60,
        what="the worker to push the changeset",
    )
    assert done.state == "pushed", done.error
    branch = campaign.spec["changeset"]["branch"]
    assert git(bare, "diff", "--binary", base, branch) == patch


def test_fake_github_refresh_updates_pull_request_state_and_checks(fake_github, settings, manager):
    settings.GITHUB_API_URL = fake_github.url
    settings.GITHUB_TOKEN = "tok-refresh"
    fake_github.pulls["acme/alpha"] = [
        {"number": 1, "state": "open", "draft": False, "merged": False, "head": {"sha": "c0ffee"}},
        {"number": 2, "state": "closed", "draft": False, "merged": True, "head": {"sha": "beef"}},
    ]
    fake_github.check_runs["c0ffee"] = [{"status": "completed", "conclusion": "failure"}]
    fake_github.check_runs["beef"] = [{"status": "completed", "conclusion": "success"}]
    campaign = campaign_make(owner=manager)
    changesets = []
    for number in (1, 2):
        run = run_make(campaign=campaign)
        changesets.append(
            Changeset.objects.create(
                run=run,
                campaign=campaign,
                diff_hash="0" * 64,
                branch="convoy/x",
                remote_url="https://github.com/acme/alpha.git",
                state="open",
                pr_number=number,
                pr_url=f"https://github.com/acme/alpha/pull/{number}",
            )
        )
    assert changesets_refresh() == 2
    first, second = (Changeset.objects.get(pk=c.pk) for c in changesets)
    assert (first.state, first.checks) == ("open", "failing")
    assert (second.state, second.checks) == ("merged", "passing")
    # Merged and closed pull requests are not asked about again.
    before = len(fake_github.requests)
    assert changesets_refresh() == 1
    assert all("/pulls/2" not in path for _, path, *_ in fake_github.requests[before:])


def test_fake_github_publish_opens_a_pull_request_for_the_pushed_branch(
    tmp_path, fake_github, monkeypatch, manager, reviewer
):
    """The branch goes to a local remote; the pull request to the local fake GitHub (the
    remote-to-host mapping is pointed at the fake, the adapter speaks real HTTP to it)."""
    adapter = GitHub(api_url=fake_github.url, token="tok-publish", rate=1000)
    monkeypatch.setattr(codehosts, "codehost_for_remote", lambda url: (adapter, "acme/alpha"))
    bare, base, patch = remote_with_change(
        tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b\n"}
    )
    campaign = campaign_make(
        owner=manager,
        variants=("only",),
        changeset={"branch": "convoy/pr", "title": "Use b", "body": "Made by <Convoy>"},
    )
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    v = variant_make(run=run, name="only", patch=patch)
    change_approve(run=run, actor=reviewer, variant=v, diff_hash=v.diff_sha256)
    changeset = changeset_push(changeset_id=change_publish(run=run, actor=reviewer).pk)
    assert changeset.state == "open" and changeset.pr_number == 1
    assert changeset.pr_url.endswith("/acme/alpha/pull/1")
    (pr,) = fake_github.pulls["acme/alpha"]
    assert (pr["head"]["ref"], pr["title"], pr["body"]) == (
        "convoy/pr",
        "Use b",
        "Made by <Convoy>",
    )
    assert git(bare, "diff", "--binary", base, "convoy/pr") == patch


def test_a_campaign_cannot_take_over_another_campaigns_published_branch(
    tmp_path, manager, reviewer
):
    """The lease took the last commit any campaign pushed to the branch: a second campaign
    naming the same `changeset.branch` replaced the first one's branch (and so its open pull
    request) with its own change. Another campaign's branch is refused, and left as it was."""
    from campaigns.models import RepoRun

    bare, base, patch = remote_with_change(
        tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b\n"}
    )
    first = campaign_make(owner=manager, variants=("only",), changeset={"branch": "convoy/shared"})
    run = run_make(campaign=first, url=f"file://{bare}", base_commit=base)
    v = variant_make(run=run, name="only", patch=patch)
    change_approve(run=run, actor=reviewer, variant=v, diff_hash=v.diff_sha256)
    published = changeset_push(changeset_id=change_publish(run=run, actor=reviewer).pk)
    assert published.state == "pushed", published.error

    second = campaign_make(owner=manager, variants=("only",), changeset={"branch": "convoy/shared"})
    other = RepoRun.objects.create(
        campaign=second, repository=run.repository, ref="main", state="succeeded", base_commit=base
    )
    w = variant_make(run=other, name="only", patch=patch)
    change_approve(run=other, actor=reviewer, variant=w, diff_hash=w.diff_sha256)
    refused = changeset_push(changeset_id=change_publish(run=other, actor=reviewer).pk)
    assert refused.state == "failed"
    assert first.name in refused.error and "convoy/shared" in refused.error
    assert git(bare, "rev-parse", "convoy/shared").decode().strip() == published.commit


def test_a_push_the_remote_refuses_ends_the_change_failed_not_queued(tmp_path, manager, reviewer):
    """A push the remote refuses for good (here a ref it cannot create) was retried as a
    network error would be and then dropped: the change stayed queued for ever, with no
    error and no event, and could be neither rejected, undone nor published again."""
    from audit.models import AuditEvent

    bare, base, patch = remote_with_change(
        tmp_path, before={"m.txt": "a\n"}, after={"m.txt": "b\n"}
    )
    (bare / "refs" / "heads" / "convoy").write_text("not a directory\n")  # blocks convoy/…
    campaign = campaign_make(owner=manager, variants=("only",), changeset={"branch": "convoy/x"})
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    v = variant_make(run=run, name="only", patch=patch)
    change_approve(run=run, actor=reviewer, variant=v, diff_hash=v.diff_sha256)
    pending = change_publish(run=run, actor=reviewer)
    failed = changeset_push(changeset_id=pending.pk, last_attempt=False)
    assert failed.state == "failed" and failed.error
    assert AuditEvent.objects.filter(action="review.change.published", outcome="failure").exists()
