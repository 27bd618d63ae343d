"""A demo campaign end to end (launch, sandboxed runs, pick, approve, publish, with a real worker
and bwrap sandboxes) leaves a trail with each action once, in order, that verifies."""

import json

import pytest

from audit.models import AuditEvent
from campaigns.models import RepoRun
from campaigns.services import campaign_create, campaign_launch
from review.models import Changeset
from review.services import change_approve, change_publish, variant_pick
from sandboxes.models import Sandbox, SandboxCommand
from tests.audit.trail import assert_trail
from tests.factories import repos_make, runs_final, spec_for
from tests.support import wait_for

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]


def _bodies(action: str) -> list[dict]:
    return [
        json.loads(b)
        for b in AuditEvent.objects.filter(action=action)
        .order_by("id")
        .values_list("body", flat=True)
    ]


def test_demo_campaign_leaves_a_complete_verifiable_trail(celery_worker, manager, reviewer):
    start = AuditEvent.objects.latest("id").pk
    tag, _paths = repos_make(1)
    campaign = campaign_create(actor=manager, source=spec_for(tag, name="trail-demo"))
    campaign_launch(campaign=campaign, actor=manager)
    runs_final(campaign, timeout=180)
    run = RepoRun.objects.get(campaign=campaign)
    variant = run.variants.order_by("position").first()
    variant_pick(run=run, variant=variant, actor=reviewer, diff_hash=variant.diff_sha256)
    change_approve(run=run, actor=reviewer, variant=variant, diff_hash=variant.diff_sha256)
    changeset = change_publish(run=run, actor=reviewer)
    wait_for(
        lambda: Changeset.objects.get(pk=changeset.pk).state == "pushed",
        timeout=60,
        what="the changeset to be pushed",
    )

    # The people's decisions: each exactly once, in this order, and the chain verifies.
    assert_trail(
        [
            "campaign.campaign.created",
            "campaign.campaign.launched",
            "review.variant.picked",
            "review.change.approved",
            "review.change.published",  # requested
            "review.change.published",  # pushed
        ],
        after_id=start,
    )
    # What the agents did: every sandbox created and terminated once, every command started
    # and completed once (with its exit code and output hash), all on behalf of the launcher.
    sandboxes = set(Sandbox.objects.filter(campaign_id=campaign.pk).values_list("pk", flat=True))
    commands = set(
        SandboxCommand.objects.filter(sandbox__in=sandboxes).values_list("pk", flat=True)
    )
    assert sandboxes and commands
    # A variant's sandbox is either created or forked from the set-up one.
    for actions in (
        ("sandbox.sandbox.created", "sandbox.fork.created"),
        ("sandbox.sandbox.terminated",),
    ):
        ids = [b["context"]["sandbox_id"] for a in actions for b in _bodies(a)]
        assert sorted(i for i in ids if i in sandboxes) == sorted(sandboxes), actions
    for action in ("sandbox.exec.started", "sandbox.exec.completed"):
        bodies = [b for b in _bodies(action) if b["payload"]["command_id"] in commands]
        assert sorted(b["payload"]["command_id"] for b in bodies) == sorted(commands), action
        assert {b["actor"]["on_behalf_of"] for b in bodies} == {"mia"}
    completed = [
        b for b in _bodies("sandbox.exec.completed") if b["payload"]["command_id"] in commands
    ]
    assert all("exit_code" in b["payload"] for b in completed)
