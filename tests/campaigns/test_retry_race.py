"""A retry checks the campaign's state as it is when the runs move, not as its caller loaded it."""

import pytest

from audit.models import AuditEvent
from campaigns.models import Campaign, CampaignState, RepoRun, RunState
from campaigns.services import campaign_cancel, campaign_retry
from campaigns.states import CampaignStateError
from tests.factories import campaign_make, run_make

pytestmark = pytest.mark.shapes("embedded", "production")


def test_a_retry_after_a_cancel_it_did_not_see_moves_no_run(manager):
    """The retry read the state on the object its view loaded: a cancel committed in between
    put the failed runs back in line in a cancelled campaign, where nothing would run them."""
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign, state=RunState.FAILED)
    loaded_by_retry = Campaign.objects.get(pk=campaign.pk)
    assert loaded_by_retry.state == CampaignState.RUNNING
    campaign_cancel(campaign=Campaign.objects.get(pk=campaign.pk), actor=manager)

    with pytest.raises(CampaignStateError, match="cancelled"):
        campaign_retry(campaign=loaded_by_retry, actor=manager)
    assert RepoRun.objects.get(pk=run.pk).state == RunState.FAILED
    assert not AuditEvent.objects.filter(action="campaign.run.retried").exists()
