"""Cancel, retry all failed runs and retry one error cluster, end to end with a real worker."""

import hashlib
import subprocess
import time

import pytest
from django.utils import timezone

from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import Campaign, CampaignState, RepoRun, RunState, VariantState
from campaigns.services import campaign_create, campaign_launch
from sandboxes.models import Sandbox, SandboxCommand, SandboxState
from tests.factories import repos_make, runs_final
from tests.support import wait_for

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]

SPEC = """\
name: {name}
backend: bwrap
repos: {{tag: {tag}}}
max_parallel: {parallel}
setup:
  - run: {setup}
transform: {{run: "sed -i 's/assertEquals(/assertEqual(/' test_calc.py"}}
"""


def _auth(user) -> dict:
    return {"Authorization": f"Bearer {token_create(user=user, name='t', scope='write')[1]}"}


def _git(path, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        cwd=path,
        check=True,
        capture_output=True,
    )


def test_cancel_stops_running_sandboxes_within_seconds_and_queued_work_never_starts(
    celery_worker, manager, client
):
    tag, _ = repos_make(6)
    campaign = campaign_create(
        actor=manager, source=SPEC.format(name="slow", tag=tag, parallel=2, setup="sleep 60")
    )
    campaign_launch(campaign=campaign, actor=manager)

    def sleeping():
        return [
            run_id
            for run_id, argv in SandboxCommand.objects.filter(
                sandbox__campaign_id=campaign.pk, finished_at=None
            ).values_list("sandbox__run_id", "argv")
            if argv[-1] == "sleep 60"
        ]

    wait_for(lambda: len(sleeping()) == 2, timeout=60, what="two runs sleeping in setup")
    busy_runs = set(sleeping())

    started = time.monotonic()
    cancelled_at = timezone.now()
    response = client.post(f"/api/v1/campaigns/{campaign.pk}/cancel", headers=_auth(manager))
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    live = Sandbox.objects.filter(campaign_id=campaign.pk).exclude(state=SandboxState.TERMINATED)
    wait_for(lambda: not live.exists(), timeout=10, what="sandboxes terminated")
    wait_for(lambda: not sleeping(), timeout=10, what="sleeping commands killed")
    assert time.monotonic() - started < 10

    runs = RepoRun.objects.filter(campaign=campaign)
    assert set(runs.values_list("state", flat=True)) == {RunState.CANCELLED}
    # Runs that were waiting for a slot never reached a sandbox, and nothing started after.
    with_sandboxes = set(
        Sandbox.objects.filter(campaign_id=campaign.pk).values_list("run_id", flat=True)
    )
    assert with_sandboxes == busy_runs
    assert not Sandbox.objects.filter(campaign_id=campaign.pk, created_at__gt=cancelled_at).exists()
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.CANCELLED
    event = AuditEvent.objects.get(action="campaign.campaign.cancelled")
    assert event.actor_display == "mia" and '"runs_cancelled":6' in event.body


def test_retry_one_cluster_then_all_failed(celery_worker, manager, client):
    tag, paths = repos_make(5)
    # Two repositories fail setup the same way (different numbers), one another way.
    for path, text in (
        (paths[0], "quota exceeded on volume 17"),
        (paths[1], "quota exceeded on volume 42"),
    ):
        (path / "fail-a").write_text(text + "\n")
    (paths[2] / "fail-b").write_text("ModuleNotFoundError: No module named 'legacy'\n")
    for path in paths[:3]:
        _git(path, "add", "-A")
        _git(path, "commit", "-qm", "break setup")
    setup = '"for f in fail-a fail-b; do if [ -f $f ]; then cat $f; exit 3; fi; done"'
    campaign = campaign_create(
        actor=manager, source=SPEC.format(name="flaky", tag=tag, parallel=3, setup=setup)
    )
    campaign_launch(campaign=campaign, actor=manager)
    runs_final(campaign, timeout=120)
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED,
        timeout=30,
        what="campaign completed with failures",
    )
    headers = _auth(manager)
    detail = client.get(f"/api/v1/campaigns/{campaign.pk}", headers=headers).json()
    assert detail["runs"]["failed"] == 3 and detail["runs"]["succeeded"] == 2
    clusters = {c["count"]: c for c in detail["clusters"]}
    assert set(clusters) == {2, 1}
    assert "quota exceeded on volume N" in clusters[2]["summary"]
    quota = clusters[2]["signature"]
    failed = client.get(
        f"/api/v1/campaigns/{campaign.pk}/runs", {"signature": quota}, headers=headers
    ).json()
    assert sorted(r["repository"] for r in failed["items"]) == ["service-00", "service-01"]
    assert AuditEvent.objects.filter(action="campaign.run.failed").count() == 3

    # Fix the quota problem in its two repositories and retry only that cluster.
    for path in paths[:2]:
        _git(path, "rm", "-q", "fail-a")
        _git(path, "commit", "-qm", "fix setup")
    response = client.post(
        f"/api/v1/campaigns/{campaign.pk}/retry",
        {"signature": quota},
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code == 200 and response.json()["retried"] == 2
    runs_final(campaign, timeout=120)
    states = dict(
        RepoRun.objects.filter(campaign=campaign).values_list("repository__name", "state")
    )
    assert states == {
        "service-00": "succeeded",
        "service-01": "succeeded",
        "service-02": "failed",
        "service-03": "succeeded",
        "service-04": "succeeded",
    }
    retried = RepoRun.objects.get(campaign=campaign, repository__name="service-00")
    assert retried.attempt == 2 and retried.error == ""
    assert retried.variants.get().state == VariantState.COMPLETED
    assert "+        self.assertEqual(add(0, 1), 1)" in retried.variants.get().diff

    _git(paths[2], "rm", "-q", "fail-b")
    _git(paths[2], "commit", "-qm", "fix setup")
    response = client.post(f"/api/v1/campaigns/{campaign.pk}/retry", headers=headers)
    assert response.status_code == 200, response.content
    assert response.json()["retried"] == 1
    runs_final(campaign, timeout=120)
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED,
        timeout=30,
        what="campaign completed again",
    )
    assert set(RepoRun.objects.filter(campaign=campaign).values_list("state", flat=True)) == {
        RunState.SUCCEEDED
    }
    assert AuditEvent.objects.filter(action="campaign.run.retried").count() == 3


@pytest.fixture
def secrets_key(monkeypatch, settings):
    """The production shape requires CONVOY_SECRETS_KEY; the worker process inherits it."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    monkeypatch.setenv("CONVOY_SECRETS_KEY", key)
    settings.SECRETS_KEY = key
    return key


def test_secrets_reach_only_their_campaigns_sandboxes_and_are_masked(
    secrets_key, celery_worker, manager, admin_user
):
    from campaigns.secret_grants import secret_grant
    from campaigns.secrets import secret_set

    secret_set(name="API_KEY", value="tok-5f3a9c", actor=admin_user)
    # Granted to the manager: only a campaign that names it receives it.
    secret_grant(name="API_KEY", manager=manager, actor=admin_user)
    digest = hashlib.sha256(b"tok-5f3a9c").hexdigest()[:16]
    tag, _ = repos_make(1)
    uses = campaign_create(
        actor=manager,
        source=SPEC.format(name="uses", tag=tag, parallel=1, setup="'true'")
        + "secrets: [API_KEY]\n"
        # Compared by hash, so the value itself appears nowhere in the spec.
        + 'validate: [{run: "echo key=$API_KEY; '
        + f'test $(printf %s \\"$API_KEY\\" | sha256sum | cut -c1-16) = {digest}"}}]\n',
    )
    other = campaign_create(
        actor=manager,
        source=SPEC.format(name="other", tag=tag, parallel=1, setup="'true'")
        + 'validate: [{run: "echo key=$API_KEY; test -z \\"$API_KEY\\""}]\n',
    )
    for campaign in (uses, other):
        campaign_launch(campaign=campaign, actor=manager)
    for campaign in (uses, other):
        runs_final(campaign, timeout=60)
        variant = RepoRun.objects.get(campaign=campaign).variants.get()
        assert variant.validation == "passed", (variant.error, variant.output_tail)
    masked = RepoRun.objects.get(campaign=uses).variants.get().output_tail
    assert "tok-5f3a9c" not in masked and "key=[secret API_KEY]" in masked
    assert not AuditEvent.objects.filter(body__contains="tok-5f3a9c").exists()
