"""`manage.py campaign apply FILE [--launch] [--wait]` and `manage.py campaign status NAME`."""

import json
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from accounts.roles import user_can
from campaigns.models import Campaign, CampaignState, RepoRun, RunState
from campaigns.selectors import campaign_counts
from campaigns.services import campaign_create, campaign_launch, campaign_update
from campaigns.spec import CampaignSpecError, spec_parse
from campaigns.states import CampaignStateError
from config.embedded import embedded_worker_start


class Command(BaseCommand):
    help = "Apply a campaign spec (create or update a draft, launch, wait), or show status."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        apply = sub.add_parser("apply", help="Create or update a draft campaign from a YAML file")
        apply.add_argument("file", help="The spec (YAML or JSON); '-' reads stdin")
        apply.add_argument("--launch", action="store_true", help="Launch it after saving")
        apply.add_argument(
            "--wait", action="store_true", help="Wait until every run is final (implies --launch)"
        )
        apply.add_argument("--timeout", type=float, default=3600, help="Seconds to wait at most")
        apply.add_argument(
            "--user", help="Act as this user (default: the first user allowed to manage campaigns)"
        )
        status = sub.add_parser("status", help="Every run with its variants' states and diffstats")
        status.add_argument("name", help="Campaign name or id")
        status.add_argument("--json", action="store_true", help="Machine-readable output")

    def handle(self, *args, **options):
        if options["action"] == "apply":
            return self._apply(options)
        return self._status(options)

    # --- apply ------------------------------------------------------------------------------
    def _actor(self, username: str | None) -> User:
        if username:
            user = User.objects.filter(username=username, is_active=True).first()
            if user is None:
                raise CommandError(f"--user: no active user {username!r}")
        else:
            user = next(
                (
                    u
                    for u in User.objects.filter(is_active=True).order_by("id")
                    if user_can(u, "campaign_manage")
                ),
                None,
            )
            if user is None:
                raise CommandError("no user may manage campaigns; create one or pass --user")
        if not user_can(user, "campaign_manage"):
            raise CommandError(f"--user: {user.username} may not manage campaigns")
        return user

    def _apply(self, options) -> None:
        path = options["file"]
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror}") from None
        actor = self._actor(options["user"])
        try:
            name = spec_parse(text).data["name"]
            existing = Campaign.objects.filter(name=name).first()
            if existing is None:
                campaign = campaign_create(actor=actor, source=text)
                self.stdout.write(f"created campaign {campaign.name} (id {campaign.pk})")
            elif existing.state == CampaignState.DRAFT:
                campaign = campaign_update(campaign=existing, actor=actor, source=text)
                self.stdout.write(f"updated draft campaign {campaign.name} (id {campaign.pk})")
            else:
                campaign = existing
                self.stdout.write(f"campaign {name} is {existing.state}; spec left unchanged")
        except CampaignSpecError as exc:
            for error in exc.errors:
                self.stderr.write(f"{path}: {error}")
            raise CommandError("invalid campaign spec", returncode=2) from None
        if (options["launch"] or options["wait"]) and campaign.state == CampaignState.DRAFT:
            try:
                campaign = campaign_launch(campaign=campaign, actor=actor)
            except CampaignStateError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(
                f"launched over {campaign.runs.count()} repositories on {campaign.backend}"
            )
        if options["wait"]:
            self._wait(campaign, options["timeout"])

    def _wait(self, campaign: Campaign, timeout: float) -> None:
        worker = None
        if settings.EMBEDDED:  # no separate worker in the embedded shape: run one here
            worker = embedded_worker_start(beat=True)
        try:
            deadline = time.monotonic() + timeout
            last = None
            while True:
                counts = campaign_counts(campaign=campaign)
                line = " ".join(f"{k}={v}" for k, v in counts["runs"].items() if v)
                if line != last:
                    self.stdout.write(f"  {counts['final']}/{counts['total']} final: {line}")
                    last = line
                if counts["final"] == counts["total"]:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(f"timed out after {timeout:.0f}s", returncode=3)
                time.sleep(1)
        finally:
            if worker is not None:
                worker.stop()
        failed = counts["runs"][RunState.FAILED] + counts["runs"][RunState.CANCELLED]
        if failed:
            raise CommandError(f"{failed} run(s) did not execute; see `campaign status`")
        self.stdout.write(self.style.SUCCESS("every run executed"))

    # --- status -----------------------------------------------------------------------------
    def _status(self, options) -> None:
        key = options["name"]
        campaign = Campaign.objects.filter(
            **({"pk": int(key)} if key.isdigit() else {"name": key})
        ).first()
        if campaign is None:
            raise CommandError(f"no campaign {key!r}")
        runs = (
            RepoRun.objects.filter(campaign=campaign)
            .select_related("repository")
            .prefetch_related("variants")
            .order_by("id")
        )
        data = {
            "name": campaign.name,
            "state": campaign.state,
            "backend": campaign.backend,
            "counts": campaign_counts(campaign=campaign)["runs"],
            "runs": [
                {
                    "repository": run.repository.name,
                    "url": run.repository.url,
                    "state": run.state,
                    "attempt": run.attempt,
                    "error": run.error_summary,
                    "variants": [
                        {
                            "name": v.name,
                            "state": v.state,
                            "validation": v.validation,
                            "files_changed": v.files_changed,
                            "insertions": v.insertions,
                            "deletions": v.deletions,
                        }
                        for v in run.variants.all()
                    ],
                }
                for run in runs.iterator(chunk_size=500)
            ],
        }
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return
        counts = " ".join(f"{k}={v}" for k, v in data["counts"].items() if v)
        self.stdout.write(f"{campaign.name}: {campaign.state} on {campaign.backend} ({counts})")
        for run in data["runs"]:
            self.stdout.write(f"  {run['repository']:<30} {run['state']:<10} {run['error']}")
            for v in run["variants"]:
                outcome = v["validation"] or "-"
                self.stdout.write(
                    f"    {v['name']:<20} {v['state']:<10} {outcome:<8} "
                    f"{v['files_changed']} file(s) +{v['insertions']} -{v['deletions']}"
                )
