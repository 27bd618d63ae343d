"""Celery entry points for campaigns: thin wrappers that take ids and call services."""

from celery import shared_task

from campaigns import dispatch, pipeline
from core.postgres.statistics import tables_analyze_stale


@shared_task(name="campaigns.run_execute", acks_late=True, ignore_result=True)
def run_execute_task(run_id: int) -> str:
    return pipeline.run_execute(run_id=run_id)


@shared_task(name="campaigns.tick", ignore_result=True)
def campaigns_tick_task() -> None:
    dispatch.campaigns_tick()


@shared_task(name="campaigns.statistics", ignore_result=True)
def statistics_refresh_task() -> None:
    tables_analyze_stale()
