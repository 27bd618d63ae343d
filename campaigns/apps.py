from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: models can only be imported once the app registry is ready.
        from django.db.models.signals import post_save

        from campaigns.models import Campaign, RepoRun, Variant
        from campaigns.sandbox_steps import sandbox_command_saved
        from campaigns.secret_grants import variant_secret_on_diff_stored
        from campaigns.signals import variant_diff_stored
        from sandboxes.models import SandboxCommand
        from sandboxes.reaper import owner_kind_register

        # A diff that contains a campaign's secret is flagged as it is stored.
        variant_diff_stored.connect(
            variant_secret_on_diff_stored, dispatch_uid="campaigns.secret_scan"
        )

        # The sandbox page's command table follows its commands (pushed on its socket).
        post_save.connect(
            sandbox_command_saved, sender=SandboxCommand, dispatch_uid="campaigns.sandbox_page"
        )

        # The sandbox reaper frees what belongs to a campaign, run or variant that is done.
        owner_kind_register(kind="campaign", model=Campaign, done=("completed", "cancelled"))
        owner_kind_register(kind="run", model=RepoRun, done=("succeeded", "failed", "cancelled"))
        owner_kind_register(
            kind="variant", model=Variant, done=("completed", "failed", "cancelled")
        )
