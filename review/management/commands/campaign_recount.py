"""`manage.py campaign_recount`: repair the kept counts of the dashboard and the review queue.

The counts are kept by database triggers as rows change (campaigns.counters, review.counts);
this recounts from the rows and adds the difference, for every campaign or the one named. A
repair that changes anything is worth reporting: it means a write bypassed the triggers.
"""

from django.core.management.base import BaseCommand, CommandError

from campaigns.models import Campaign
from review.counts import campaign_recount


class Command(BaseCommand):
    help = "Recount runs by state and review buckets from the rows; fix the kept counts."

    def add_arguments(self, parser):
        parser.add_argument("--campaign", help="only this campaign (id or name)")

    def handle(self, *args, campaign=None, **options):
        campaigns = Campaign.objects.order_by("id")
        if campaign:
            lookup = {"pk": int(campaign)} if campaign.isdigit() else {"name": campaign}
            campaigns = campaigns.filter(**lookup)
            if not campaigns.exists():
                raise CommandError(f"no campaign {campaign!r}")
        repaired = 0
        for target in campaigns.iterator():
            diff = campaign_recount(campaign=target)
            if diff:
                repaired += 1
                fixed = ", ".join(f"{k} {v:+d}" for k, v in sorted(diff.items()))
                self.stdout.write(f"{target.name}: repaired ({fixed})")
        self.stdout.write(f"{campaigns.count()} campaign(s) recounted, {repaired} repaired")
