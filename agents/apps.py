"""The agents app: model providers, per-variant model grants, the model gateway, model calls."""

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"
