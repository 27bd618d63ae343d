"""The review app: comparison, decisions, bulk groups, publishing and code hosts."""

from django.apps import AppConfig

from campaigns.signals import variant_diff_rows, variant_diff_stored


class ReviewConfig(AppConfig):
    name = "review"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: the receiver's service needs the models, which Django
        # loads only after every app config.
        from review.receivers import variant_digest_on_diff_stored, variant_digest_rows_on_diff

        variant_diff_stored.connect(
            variant_digest_on_diff_stored, dispatch_uid="review.variant_digest"
        )
        variant_diff_rows.connect(
            variant_digest_rows_on_diff, dispatch_uid="review.variant_digest_rows"
        )
