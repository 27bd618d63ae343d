"""The dispatcher queues pending runs into the slots campaigns have free."""

import pytest

from campaigns.dispatch import runs_dispatch
from campaigns.models import Campaign, RepoRun, RunState
from tests.factories import campaign_make, run_make

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.mark.django_db
def test_a_campaign_in_its_tail_does_not_stop_the_others_being_dispatched(manager, settings):
    """A campaign with free slots but no pending run left (the tail of every campaign) made
    the dispatcher fail on PostgreSQL: no run of any other campaign was queued, and launch,
    cancel and the tick answered with that error."""
    settings.MAX_PARALLEL_REPOS = 20
    tail = campaign_make(owner=manager, variants=("a",))
    Campaign.objects.filter(pk=tail.pk).update(max_parallel=4)
    run_make(campaign=tail, state=RunState.RUNNING)
    waiting = campaign_make(owner=manager, variants=("a",))
    Campaign.objects.filter(pk=waiting.pk).update(max_parallel=4)
    runs = [run_make(campaign=waiting, state=RunState.PENDING) for _ in range(3)]

    assert runs_dispatch() == 3

    states = set(
        RepoRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("state", flat=True)
    )
    assert states == {RunState.QUEUED}
