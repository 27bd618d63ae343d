"""Celery entry points for review: push a published change, refresh pull request states.

Each task loads by id and calls a service. `changeset_push` records a failed push on the
changeset itself and only lets transient errors (a push the remote refused for now, a code-host
rate limit, the database away) out; those retry. A refusal (`ConvoyError`) never does.
"""

from celery import shared_task

from core.errors import ConvoyError

# review.services imports this module too: see the note there on why the cycle is safe.
from review import services


@shared_task(
    name="review.changeset_push",
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=5,
    dont_autoretry_for=(ConvoyError,),
)
def changeset_push_task(self, changeset_id: int) -> None:
    # The last try records a push that still fails (with its event): without it the change
    # stayed queued, and could be neither rejected, undone nor published again.
    last = self.request.retries >= (self.max_retries or 0)
    services.changeset_push(changeset_id=changeset_id, last_attempt=last)


@shared_task(name="review.changesets_refresh", ignore_result=True)
def changesets_refresh_task() -> None:
    services.changesets_refresh()
