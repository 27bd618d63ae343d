"""`manage.py review_digests_backfill`: group diffs stored before digests were kept at write time.

New diffs get their digest when campaigns stores them (`review/receivers.py`); this is for rows
older than that, and is safe to run again (it only writes missing or stale digests).
"""

from django.core.management.base import BaseCommand, CommandError

from campaigns.models import Campaign
from review.digests import variant_digests_refresh


class Command(BaseCommand):
    help = "Compute the bulk-review group key of every variant diff that has none (or a stale one)."

    def add_arguments(self, parser):
        parser.add_argument("--campaign", help="only this campaign (id or name)")

    def handle(self, *args, campaign=None, **options):
        target = None
        if campaign:
            lookup = {"pk": int(campaign)} if campaign.isdigit() else {"name": campaign}
            target = Campaign.objects.filter(**lookup).first()
            if target is None:
                raise CommandError(f"no campaign {campaign!r}")
        done = variant_digests_refresh(campaign=target)
        self.stdout.write(f"{done} digest(s) written")
