"""The Celery app: Redis broker in the production shape, memory transport when embedded."""

import os
import sys

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("convoy")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _check_settings() -> None:
    """Fail a `celery worker` start with the same one-line message as manage.py."""
    from django.core.exceptions import ImproperlyConfigured

    try:
        from django.conf import settings

        settings.INSTALLED_APPS  # noqa: B018 - forces the settings module to load
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"convoy: configuration error: {exc}\n")
        sys.exit(2)


if "celery" in os.path.basename(sys.argv[0]):
    _check_settings()
