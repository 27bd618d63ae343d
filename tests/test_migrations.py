"""Upgrading a database from the schema before the review app existed keeps every row."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from campaigns.models import Variant
from campaigns.secret_grants import variant_patch_for_display
from campaigns.secrets import secret_set
from core.crypto import secrets_fernet
from tests.factories import patch_for

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]

BEFORE = [("campaigns", "0002_review"), ("review", None)]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state([t for t in targets if t[1]]).apps


def _latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


def test_runs_picks_and_decisions_survive_the_move_to_the_review_app():
    latest = _latest()
    old = _migrate(BEFORE)
    try:
        User = old.get_model("auth", "User")
        Repository = old.get_model("campaigns", "Repository")
        Campaign = old.get_model("campaigns", "Campaign")
        RepoRun = old.get_model("campaigns", "RepoRun")
        Variant = old.get_model("campaigns", "Variant")
        RunReview = old.get_model("campaigns", "RunReview")
        Decision = old.get_model("campaigns", "Decision")
        Changeset = old.get_model("campaigns", "Changeset")

        rob = User.objects.create(username="rob")
        ada = User.objects.create(username="ada")
        campaign = Campaign.objects.create(name="old", spec={}, backend="bwrap", owner=ada)
        repo = Repository.objects.create(url="file:///srv/a.git", name="a")
        run = RepoRun.objects.create(campaign=campaign, repository=repo, ref="main")
        variant = Variant.objects.create(run=run, name="sed", diff_sha256="ab" * 32)
        RunReview.objects.create(
            run=run, campaign=campaign, state="approved", variant=variant, decided_by=rob
        )
        Decision.objects.create(run=run, variant=variant, kind="pick", actor=rob)
        Decision.objects.create(run=run, variant=variant, kind="approve", actor=ada)
        Changeset.objects.create(run=run, campaign=campaign, variant=variant, branch="convoy/old")
    finally:
        new = _migrate(latest)

    assert "review_runreview" in connection.introspection.table_names()
    assert "campaigns_runreview" not in connection.introspection.table_names()
    review = new.get_model("review", "RunReview").objects.get()
    assert (review.state, review.variant.name, review.decided_by.username) == (
        "approved",
        "sed",
        "rob",
    )
    kinds = new.get_model("review", "Decision").objects.order_by("pk").values_list("kind")
    assert [k for (k,) in kinds] == ["pick", "approve"]
    assert new.get_model("review", "Changeset").objects.get().branch == "convoy/old"


def test_a_secret_finding_from_before_the_upgrade_stays_masked_after_a_rotation(admin_user):
    """Findings made before they kept their values get the values stored then (the ones
    they were found with, unless rotated already), so a later rotation does not unmask them."""
    value = "tok-before-the-upgrade-42"
    latest = _latest()
    old = _migrate([("campaigns", "0010_repository_tag_owner")])
    try:
        User = old.get_model("auth", "User")
        Campaign = old.get_model("campaigns", "Campaign")
        Repository = old.get_model("campaigns", "Repository")
        RepoRun = old.get_model("campaigns", "RepoRun")
        ada = User.objects.get(pk=admin_user.pk)
        campaign = Campaign.objects.create(name="old", spec={}, backend="bwrap", owner=ada)
        repo = Repository.objects.create(url="file:///srv/a.git", name="a")
        run = RepoRun.objects.create(campaign=campaign, repository=repo, ref="main")
        variant = old.get_model("campaigns", "Variant").objects.create(
            run=run, name="a", patch=patch_for("ci.yml", "x", f"token: {value}")
        )
        old.get_model("campaigns", "Secret").objects.create(
            name="API_TOKEN", ciphertext=secrets_fernet().encrypt(value.encode())
        )
        old.get_model("campaigns", "SecretLeak").objects.create(
            variant=variant, names=["API_TOKEN"], forms=["plain"]
        )
    finally:
        _migrate(latest)

    secret_set(name="API_TOKEN", value="the-value-after-rotation", actor=admin_user)

    shown = variant_patch_for_display(variant=Variant.objects.get()).decode()
    assert value not in shown and "[secret API_TOKEN]" in shown


def _triggers_on(table: str) -> set[str]:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                [table],
            )
        else:
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [table]
            )
        return {name for (name,) in cursor.fetchall()}


def test_approvals_from_before_the_text_was_bound_bind_it_when_publishing_is_requested():
    """Approvals made before review 0007 carry no text: they keep working, binding the spec's
    text when publishing is asked. A change already queued gets the text its push would have
    read. The changeset table keeps its queue-flag triggers (a rebuilt SQLite table drops them)."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from review.models import Changeset, Decision
    from review.services import change_publish

    latest = _latest()
    triggers = _triggers_on("review_changeset")
    assert triggers
    old = _migrate([("review", "0006_queue_flags_refresh_by_run")])
    try:
        User = old.get_model("auth", "User")
        Campaign = old.get_model("campaigns", "Campaign")
        Repository = old.get_model("campaigns", "Repository")
        RepoRun = old.get_model("campaigns", "RepoRun")
        Variant = old.get_model("campaigns", "Variant")
        RunReview = old.get_model("review", "RunReview")
        OldDecision = old.get_model("review", "Decision")
        OldChangeset = old.get_model("review", "Changeset")
        ada = User.objects.create(username="ada")
        spec = {"changeset": {"branch": "convoy/old", "title": "Old title"}}
        campaign = Campaign.objects.create(
            name="old", spec=spec, backend="bwrap", owner=ada, launched_at=timezone.now()
        )
        runs = []
        for n in range(2):
            repo = Repository.objects.create(url=f"file:///srv/{n}.git", name=f"r{n}")
            run = RepoRun.objects.create(campaign=campaign, repository=repo, ref="main")
            variant = Variant.objects.create(
                run=run, name="sed", state="completed", diff_sha256=f"{n}" * 64, patch=b"x"
            )
            RunReview.objects.create(
                run=run,
                campaign=campaign,
                state="approved",
                variant=variant,
                approved_hash=variant.diff_sha256,
            )
            OldDecision.objects.create(
                run=run, variant=variant, kind="approve", diff_hash=variant.diff_sha256, actor=ada
            )
            runs.append(run)
        OldChangeset.objects.create(
            run=runs[0], campaign=campaign, diff_hash="0" * 64, branch="convoy/old", state="queued"
        )
    finally:
        _migrate(latest)

    assert _triggers_on("review_changeset") == triggers
    assert list(Decision.objects.values_list("publish_text", flat=True)) == [None, None]
    queued = Changeset.objects.get(run_id=runs[0].pk)
    assert queued.publish_text["title"] == "Old title" and queued.publish_hash
    # The spec changed after that approval: the old approval takes the text of now.
    from campaigns.models import Campaign as Current
    from campaigns.models import RepoRun as CurrentRun

    Current.objects.filter(pk=campaign.pk).update(
        spec={"changeset": {"branch": "convoy/old", "title": "New title"}}
    )
    run = CurrentRun.objects.get(pk=runs[1].pk)
    published = change_publish(run=run, actor=get_user_model().objects.get(username="ada"))
    assert published.publish_text["title"] == "New title"
