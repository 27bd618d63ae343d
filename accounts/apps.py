"""The accounts app: login auditing and the role groups, kept in step after every migrate."""

from django.apps import AppConfig
from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: both modules import models, which Django only allows once the app
        # registry is ready.
        from django.contrib.auth.management import create_permissions

        from accounts import signals  # noqa: F401 - connects login/logout auditing
        from accounts.passwords import sqlite_file_private
        from accounts.services import roles_ensure

        connection_created.connect(sqlite_file_private, dispatch_uid="accounts.sqlite_private")

        def permissions_and_roles(sender, **kwargs) -> None:
            # `accounts` is listed before django.contrib.auth (its `changepassword` replaces
            # Django's), so auth's own receiver has not yet made this app's permissions.
            create_permissions(
                sender,
                verbosity=0,
                using=kwargs.get("using", DEFAULT_DB_ALIAS),
                apps=kwargs.get("apps", global_apps),
            )
            roles_ensure()

        post_migrate.connect(permissions_and_roles, sender=self, weak=False)
