"""Project configuration: settings, URLs, the API root, ASGI and Celery wiring."""

from config.celery import app as celery_app

__all__ = ("celery_app",)
