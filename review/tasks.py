"""Celery entry points for review: push a published change, refresh pull request states."""

from celery import shared_task

from review import services


@shared_task(
    name="review.changeset_push",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=5,
    dont_autoretry_for=(services.ReviewError,),
)
def changeset_push_task(changeset_id: int) -> None:
    services.changeset_push(changeset_id=changeset_id)


@shared_task(name="review.changesets_refresh", ignore_result=True)
def changesets_refresh_task() -> None:
    services.changesets_refresh()
