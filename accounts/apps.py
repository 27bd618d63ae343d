"""The accounts app: login auditing and the role groups, kept in step after every migrate."""

from django.apps import AppConfig
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: both modules import models, which Django only allows once the app
        # registry is ready.
        from accounts import signals  # noqa: F401 - connects login/logout auditing
        from accounts.passwords import sqlite_file_private
        from accounts.services import roles_ensure

        connection_created.connect(sqlite_file_private, dispatch_uid="accounts.sqlite_private")

        post_migrate.connect(lambda **kwargs: roles_ensure(), sender=self, weak=False)
