"""Publishing an approved diff as a commit on a branch of a local (file://) remote."""

import json
import subprocess

import pytest

from review.publish import PublishError, change_push, git_auth_env
from tests.factories import git, remote_with_change

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def remote(tmp_path):
    """A bare repository with one commit on main, and a patch made against it."""
    return remote_with_change(
        tmp_path,
        before={"app.py": "def f():\n    return 1\n", "data.bin": b"\x00\x01\x02"},
        after={
            "app.py": "def f():\n    return 2\n",
            "data.bin": b"\x00\xff\x02\x03",
            "new.txt": "<script>x</script>\n",
        },
    )


def test_publish_pushes_exactly_the_approved_diff_with_the_specs_author(remote, tmp_path):
    bare, base, patch = remote
    pushed = change_push(
        remote_url=f"file://{bare}",
        base_commit=base,
        base_ref="main",
        patch=patch,
        branch="convoy/fix-things",
        message="Fix things\n\nBy Convoy.",
        author="Ann Reviewer <ann@example.com>",
    )
    assert git(bare, "rev-parse", "refs/heads/convoy/fix-things").decode().strip() == pushed.commit
    assert git(bare, "diff", "--binary", base, "convoy/fix-things") == patch
    log = git(bare, "log", "-1", "--format=%an <%ae>|%s|%P", "convoy/fix-things").decode()
    assert log.strip() == f"Ann Reviewer <ann@example.com>|Fix things|{base}"
    # main is untouched
    assert git(bare, "rev-parse", "main").decode().strip() == base

    # Republishing (after a rerun changed the diff) replaces the branch.
    smaller = patch.split(b"diff --git a/data.bin")[0]
    again = change_push(
        remote_url=f"file://{bare}",
        base_commit=base,
        base_ref="main",
        patch=smaller,
        branch="convoy/fix-things",
        message="Fix things",
        replaces=pushed.commit,  # what Convoy pushed there last
    )
    assert again.commit != pushed.commit
    assert git(bare, "diff", "--binary", base, "convoy/fix-things") == smaller


def test_publish_refuses_bad_branch_remote_and_a_diff_that_no_longer_applies(remote):
    bare, base, patch = remote
    common = {"base_commit": base, "base_ref": "main", "message": "m"}
    with pytest.raises(PublishError, match=r"changeset\.branch"):
        change_push(remote_url=f"file://{bare}", patch=patch, branch="bad..name", **common)
    with pytest.raises(PublishError, match="only file, https and ssh"):
        change_push(remote_url="ext::sh -c touch% /tmp/pwned", patch=patch, branch="b", **common)
    broken = patch.replace(b"-    return 1", b"-    return 9")
    with pytest.raises(PublishError, match="no longer applies"):
        change_push(remote_url=f"file://{bare}", patch=broken, branch="b", **common)
    assert b"refs/heads/b" not in git(bare, "show-ref")


def test_publish_never_overwrites_a_branch_that_is_not_convoys(remote):
    """The push was forced: `changeset.branch: main` (or any existing branch) was replaced by
    the change, dropping what was committed there since. Now only a branch Convoy pushed, still
    at that commit, is replaced; the base branch never."""
    bare, base, patch = remote
    common = {"base_commit": base, "base_ref": "main", "message": "m", "patch": patch}
    with pytest.raises(PublishError, match="the branch the change is made on"):
        change_push(remote_url=f"file://{bare}", branch="main", **common)
    git(bare, "branch", "release", base)  # someone else's branch
    with pytest.raises(PublishError, match="not the commit Convoy pushed"):
        change_push(remote_url=f"file://{bare}", branch="release", **common)
    assert git(bare, "rev-parse", "release").decode().strip() == base
    assert git(bare, "rev-parse", "main").decode().strip() == base
    # A branch Convoy pushed and someone changed since is not overwritten either.
    first = change_push(remote_url=f"file://{bare}", branch="convoy/x", **common)
    git(bare, "update-ref", "refs/heads/convoy/x", base)
    with pytest.raises(PublishError, match="not the commit Convoy pushed"):
        change_push(remote_url=f"file://{bare}", branch="convoy/x", replaces=first.commit, **common)


def test_publish_ignores_host_git_config_and_hooks(remote, tmp_path, monkeypatch):
    bare, base, patch = remote
    marker = tmp_path / "hook-ran"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("pre-commit", "commit-msg", "post-commit", "pre-push"):
        (hooks / name).write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
        (hooks / name).chmod(0o755)
    config = tmp_path / "gitconfig"
    config.write_text(f"[core]\n\thooksPath = {hooks}\n[user]\n\tname = Host User\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("HOME", str(tmp_path))
    # The trap is armed: plain git with this environment runs the hooks.
    probe = tmp_path / "probe"
    subprocess.run(["git", "init", "-q", str(probe)], check=True)
    subprocess.run(
        ["git", "-c", "user.email=a@x", "commit", "-q", "--allow-empty", "-m", "x"],
        cwd=probe,
        check=True,
    )
    assert marker.exists()
    marker.unlink()

    pushed = change_push(
        remote_url=f"file://{bare}",
        base_commit=base,
        base_ref="main",
        patch=patch,
        branch="convoy/hooks",
        message="m",
    )
    assert not marker.exists()
    author = git(bare, "log", "-1", "--format=%an", pushed.commit).decode().strip()
    assert author == "Convoy"


def test_https_pushes_carry_the_token_in_the_environment_not_argv():
    env = git_auth_env(remote_url="https://github.com/acme/alpha.git", token="s3cret")
    assert env["GIT_CONFIG_KEY_0"] == "http.https://github.com/.extraheader"
    assert env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
    assert "s3cret" not in env["GIT_CONFIG_VALUE_0"]  # base64 of x-access-token:<token>
    assert git_auth_env(remote_url="file:///srv/alpha.git", token="s3cret") == {}


@pytest.mark.django_db
def test_a_previews_runs_are_not_published(client, manager, reviewer):
    """A preview "is not a launch and publishes nothing": its approved runs were published."""
    from accounts.services import token_create
    from campaigns.models import Campaign, CampaignState
    from review.models import Changeset
    from tests.factories import campaign_make, patch_for, run_make, variant_make

    campaign = campaign_make(owner=manager, variants=("a",))
    Campaign.objects.filter(pk=campaign.pk).update(
        state=CampaignState.PREVIEWING, launched_by=None, launched_at=None
    )
    run = run_make(campaign=campaign)
    a = variant_make(run=run, name="a", patch=patch_for("x.py", "1", "2"))
    _, raw = token_create(user=reviewer, name="t", scope="write")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    url = f"/api/v1/review/campaigns/{campaign.pk}/runs/{run.pk}"
    review = client.get(url, **auth).json()
    approved = client.post(
        f"{url}/approve",
        {"variant": "a", "diff_hash": a.diff_sha256, "publish_hash": review["publish_hash"]},
        content_type="application/json",
        **auth,
    )
    assert approved.status_code == 200
    published = client.post(f"{url}/publish", content_type="application/json", **auth)
    assert published.status_code in (409, 422), published.content
    assert "has not been launched" in published.json()["detail"]
    assert not Changeset.objects.filter(run=run).exists()


def test_publish_refuses_a_patch_git_reads_otherwise_than_the_page(remote):
    """A `---`/`+++` hunk after a binary patch, in the binary file's section: git apply applied
    it as another file's change; the review page had hidden it."""
    bare, base, patch = remote
    sections = {s.split(b"\n", 1)[0]: s for s in patch.split(b"diff --git ")[1:]}
    binary = b"diff --git " + sections[b"a/data.bin b/data.bin"]
    text = sections[b"a/app.py b/app.py"].split(b"\n--- ", 1)[1]
    mixed = binary + b"--- " + text
    common = {"base_commit": base, "base_ref": "main", "message": "m"}
    with pytest.raises(PublishError, match="cannot be read"):
        change_push(remote_url=f"file://{bare}", patch=mixed, branch="convoy/m", **common)
    assert b"refs/heads/convoy/m" not in git(bare, "show-ref")


@pytest.mark.django_db
def test_a_rerun_diff_republished_while_the_old_push_runs_is_pushed_after_it(
    remote, monkeypatch, manager, reviewer
):
    """A rerun's newly approved diff, published while the old diff's push ran: the old push
    marked the row done, so the new diff's push did nothing and the branch kept the old diff
    while Convoy recorded the new diff's hash. Now the new diff is pushed after it."""
    from audit.models import AuditEvent
    from review import services
    from review.models import Changeset
    from tests.factories import campaign_make, run_make, variant_make, variant_rerun

    bare, base, patch = remote
    smaller = patch.split(b"diff --git a/data.bin")[0]
    campaign = campaign_make(owner=manager, variants=("a",))
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    variant = variant_make(run=run, name="a", patch=patch)
    services.change_approve(run=run, variant=variant, actor=reviewer, diff_hash=variant.diff_sha256)
    changeset = services.change_publish(run=run, actor=reviewer)
    branch = changeset.branch

    push = services.change_push
    republished = []

    def push_while_republished(**kw):
        if not republished:  # while the first push runs: rerun, approved again, published
            republished.append(True)
            variant_rerun(variant, smaller)
            variant.refresh_from_db()
            services.change_approve(
                run=run, variant=variant, actor=reviewer, diff_hash=variant.diff_sha256
            )
            services.change_publish(run=run, actor=reviewer)
        return push(**kw)

    monkeypatch.setattr(services, "change_push", push_while_republished)
    first = services.changeset_push(changeset_id=changeset.pk)
    assert first.state == "queued" and first.diff_hash == variant.diff_sha256
    assert git(bare, "diff", "--binary", base, branch) == patch  # the old push landed
    event = json.loads(
        AuditEvent.objects.filter(action="review.change.published").latest("id").body
    )
    assert event["payload"]["status"] == "superseded"
    assert event["payload"]["superseded_by_diff_hash"] == variant.diff_sha256

    second = services.changeset_push(changeset_id=changeset.pk)
    assert second.state == "pushed", second.error
    assert git(bare, "diff", "--binary", base, branch) == smaller
    assert git(bare, "rev-parse", branch).decode().strip() == second.commit
    assert Changeset.objects.get(pk=changeset.pk).diff_hash == variant.diff_sha256


@pytest.mark.django_db
def test_a_cancelled_campaign_publishes_nothing_more(client, remote, manager, reviewer):
    """Cancelling stopped runs but not publishing: queued pushes still ran and approved
    changes could still be published. Now queued pushes stop and publishing is refused."""
    from accounts.services import token_create
    from campaigns.services import campaign_cancel
    from review import services
    from tests.factories import campaign_make, run_make, variant_make

    bare, base, patch = remote
    campaign = campaign_make(owner=manager, variants=("a",))
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    variant = variant_make(run=run, name="a", patch=patch)
    services.change_approve(run=run, variant=variant, actor=reviewer, diff_hash=variant.diff_sha256)
    changeset = services.change_publish(run=run, actor=reviewer)
    # Another approved change, not yet published.
    other = run_make(campaign=campaign)
    waiting = variant_make(run=other, name="a", patch=patch)
    services.change_approve(
        run=other, variant=waiting, actor=reviewer, diff_hash=waiting.diff_sha256
    )
    campaign_cancel(campaign=campaign, actor=manager)

    stopped = services.changeset_push(changeset_id=changeset.pk)
    assert stopped.state == "failed" and "is cancelled" in stopped.error
    assert b"refs/heads/" + changeset.branch.encode() not in git(bare, "show-ref")

    _, raw = token_create(user=reviewer, name="t", scope="write")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}", "content_type": "application/json"}
    url = f"/api/v1/review/campaigns/{campaign.pk}"
    for path in (f"{url}/runs/{run.pk}/publish", f"{url}/publish"):
        refused = client.post(path, **auth)
        assert refused.status_code == 409, refused.content
        assert f"Campaign {campaign.name} is cancelled" in refused.json()["detail"]
        assert [e["field"] for e in refused.json()["errors"]] == ["campaign"]
    assert services.changeset_push(changeset_id=changeset.pk).state == "failed"
    # The pages offer no Publish button that would only be refused.
    client.force_login(reviewer)
    page = client.get(f"/campaigns/{campaign.pk}/runs/{run.pk}/compare/").content.decode()
    assert 'data-testid="publish-cancelled"' in page and 'data-testid="publish"' not in page
    queue = client.get(f"/campaigns/{campaign.pk}/review/?which=approved").content.decode()
    assert 'data-testid="publish-approved"' not in queue


def _published_rerun(remote, manager, reviewer):
    """A published change and a smaller diff a rerun will give it."""
    from review import services
    from tests.factories import campaign_make, run_make, variant_make

    bare, base, patch = remote
    campaign = campaign_make(owner=manager, variants=("a",))
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    variant = variant_make(run=run, name="a", patch=patch)
    services.change_approve(run=run, variant=variant, actor=reviewer, diff_hash=variant.diff_sha256)
    return run, variant, services.change_publish(run=run, actor=reviewer)


def _republish(run, variant, patch, reviewer):
    from review import services
    from tests.factories import variant_rerun

    variant_rerun(variant, patch)
    variant.refresh_from_db()
    services.change_approve(run=run, variant=variant, actor=reviewer, diff_hash=variant.diff_sha256)
    services.change_publish(run=run, actor=reviewer)


@pytest.mark.django_db
def test_a_republish_whose_push_failed_on_the_old_pushs_commit_is_queued_again(
    remote, monkeypatch, manager, reviewer
):
    """The newer push ran while the old one was between its push and its record: its lease
    (the commit before) failed. The old push, finding the row replaced, queues it again."""
    from review import services

    bare, base, patch = remote
    smaller = patch.split(b"diff --git a/data.bin")[0]
    run, variant, changeset = _published_rerun(remote, manager, reviewer)
    push = services.change_push
    calls = []

    def newer_push_runs_after_the_old_push_landed(**kw):
        calls.append(True)
        pushed = push(**kw)
        if len(calls) == 1:
            _republish(run, variant, smaller, reviewer)
            newer = services.changeset_push(changeset_id=changeset.pk)
            assert newer.state == "failed" and "not the commit Convoy pushed" in newer.error
        return pushed

    monkeypatch.setattr(services, "change_push", newer_push_runs_after_the_old_push_landed)
    first = services.changeset_push(changeset_id=changeset.pk)
    assert (first.state, first.error) == ("queued", "")
    assert git(bare, "rev-parse", changeset.branch).decode().strip() == first.commit
    again = services.changeset_push(changeset_id=changeset.pk)
    assert again.state == "pushed", again.error
    assert git(bare, "diff", "--binary", base, changeset.branch) == smaller


@pytest.mark.django_db
def test_a_push_whose_lease_an_older_push_moved_meanwhile_retries(
    remote, monkeypatch, manager, reviewer
):
    """The newer push read the lease, then the old push landed and recorded its commit: the
    newer push's refusal is transient (the task retries with the new lease), not a failure."""
    from review import services
    from review.models import Changeset

    bare, base, patch = remote
    smaller = patch.split(b"diff --git a/data.bin")[0]
    run, variant, changeset = _published_rerun(remote, manager, reviewer)
    _republish(run, variant, smaller, reviewer)
    push = services.change_push
    calls = []

    def old_push_lands_first(**kw):
        calls.append(True)
        if len(calls) == 1:  # the old push (its diff) lands and is recorded meanwhile
            old = push(**{**kw, "patch": patch})
            Changeset.objects.filter(pk=changeset.pk).update(commit=old.commit)
        return push(**kw)

    monkeypatch.setattr(services, "change_push", old_push_lands_first)
    with pytest.raises(PublishError) as retried:
        services.changeset_push(changeset_id=changeset.pk, last_attempt=False)
    assert retried.value.transient
    assert Changeset.objects.get(pk=changeset.pk).state == "queued"
    again = services.changeset_push(changeset_id=changeset.pk)
    assert again.state == "pushed", again.error
    assert git(bare, "diff", "--binary", base, changeset.branch) == smaller


def test_publish_all_republishes_a_rerun_diff_approved_again(remote, manager, reviewer):
    """A published change whose rerun's new diff was approved again was left out of "Publish
    all" (only never published and failed ones were taken): its branch kept the old diff. Now
    publish-all pushes the approved diff, as publishing it alone does."""
    from review import services
    from review.models import Changeset
    from tests.factories import campaign_make, run_make, variant_make, variant_rerun

    bare, base, patch = remote
    smaller = patch.split(b"diff --git a/data.bin")[0]
    campaign = campaign_make(owner=manager, variants=("a",))
    run = run_make(campaign=campaign, url=f"file://{bare}", base_commit=base)
    variant = variant_make(run=run, name="a", patch=patch)
    services.change_approve(run=run, variant=variant, actor=reviewer, diff_hash=variant.diff_sha256)
    assert services.changes_publish_approved(campaign=campaign, actor=reviewer).queued == [run.pk]
    changeset = services.changeset_push(changeset_id=Changeset.objects.get(run=run).pk)
    assert changeset.state == "pushed", changeset.error

    variant_rerun(variant, smaller)
    variant.refresh_from_db()
    # Not approved yet: publish-all does not touch the branch.
    assert services.changes_publish_approved(campaign=campaign, actor=reviewer).queued == []
    services.change_approve(run=run, variant=variant, actor=reviewer, diff_hash=variant.diff_sha256)
    assert services.changes_publish_approved(campaign=campaign, actor=reviewer).queued == [run.pk]
    pushed = services.changeset_push(changeset_id=changeset.pk)
    assert pushed.state == "pushed", pushed.error
    assert git(bare, "diff", "--binary", base, changeset.branch) == smaller
    assert services.changes_publish_approved(campaign=campaign, actor=reviewer).queued == []
