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
