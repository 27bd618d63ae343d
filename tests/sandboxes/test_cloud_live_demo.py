"""The demo campaign end to end on each provider's real cloud, with only `backend:` changed.
Each runs only with that provider's credentials in the environment (the backend's own
`configured()`); otherwise it is reported as skipped with the reason, i.e. not run.

The demo's steps need git and python3, which the default registry image
(debian:bookworm-slim) lacks, and a spec cannot name another image on a cloud backend yet
(docs/backends.md, "Not done yet"): here Modal and Daytona start from LIVE_IMAGE instead, and
E2B from its `base` template (or E2B_TEMPLATE). Everything the campaign made is gone after it.
"""

import dataclasses
import os

import pytest
from django.utils.module_loading import import_string

from campaigns.demo import DEMO_TAG
from campaigns.models import RepoRun, RunState
from campaigns.services import campaign_create, campaign_launch
from sandboxes import services
from sandboxes.backends import BACKENDS
from sandboxes.models import Sandbox, SandboxState
from tests.campaigns.test_backend_choice import demo_spec_on
from tests.factories import campaign_completed, repos_make
from tests.sandboxes.test_cloud_demo import worker_in_process  # noqa: F401 - the fixture

LIVE_IMAGE = "python:3.12-bookworm"  # git and python3
CREDENTIALS = {
    "modal": "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or ~/.modal.toml",
    "e2b": "E2B_API_KEY",
    "daytona": "DAYTONA_API_KEY",
}


def _live(name: str):
    cls = import_string(BACKENDS[name])
    return pytest.param(
        name,
        marks=pytest.mark.skipif(
            not cls.configured(),
            reason=f"NOT RUN: no {name} credentials (set {CREDENTIALS[name]}): the demo campaign "
            f"on {name} is only exercised through its fake SDK",
        ),
    )


pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.slow]


def live_engine(name: str):
    cls = import_string(BACKENDS[name])
    if name == "e2b":
        return cls(templates={"debian:bookworm-slim": os.environ.get("E2B_TEMPLATE", "base")})

    class WithGit(cls):
        def create(self, spec):
            return super().create(dataclasses.replace(spec, image=LIVE_IMAGE))

    return WithGit()


@pytest.mark.parametrize("name", [_live(n) for n in CREDENTIALS])
def test_cloud_live_demo_campaign_end_to_end(name, manager, monkeypatch, worker_in_process):  # noqa: F811
    engine = live_engine(name)
    monkeypatch.setitem(services._backends, name, engine)
    repos_make(2, tag=DEMO_TAG)
    campaign = campaign_create(actor=manager, source=demo_spec_on(name))
    campaign_launch(campaign=campaign, actor=manager)
    try:
        campaign_completed(campaign, timeout=1800)
    finally:
        leftovers = engine.list({"convoy_campaign": str(campaign.pk)})
        for handle in leftovers:
            engine.terminate(handle)
    runs = list(RepoRun.objects.filter(campaign=campaign))
    assert {run.state for run in runs} == {RunState.SUCCEEDED}, [r.error for r in runs]
    states = set(Sandbox.objects.filter(campaign_id=campaign.pk).values_list("state", flat=True))
    assert states == {SandboxState.TERMINATED}
    assert not leftovers, f"left running on {name}: {[h.external_id for h in leftovers]}"
