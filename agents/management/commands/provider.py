"""`manage.py provider add|ls|rm`: model providers for agent campaigns (audited, as a named admin).

The key is read from an environment variable (`--key-env`) or standard input (`--key-stdin`),
never from the command line, where other users of the host could read it.
"""

import os
import sys

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from accounts.roles import user_can
from agents.providers import CAPABILITY, KEEP, provider_remove, provider_set, providers_for_user
from core.errors import ConvoyError


class Command(BaseCommand):
    help = "Add, list or remove the model providers agent variants may call."

    def add_arguments(self, parser):
        parser.add_argument("--user", help="the admin to record as the actor (default: first)")
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a provider, or change one (same name)")
        add.add_argument("name")
        add.add_argument("--style", choices=["openai", "anthropic"], required=True)
        add.add_argument("--base-url", required=True, help="API root incl. version, e.g. …/v1")
        add.add_argument("--key-env", help="read the API key from this environment variable")
        add.add_argument("--key-stdin", action="store_true", help="read the API key from stdin")
        add.add_argument("--models", default="", help="allowed models, comma-separated")
        add.add_argument("--input-price", help="USD per million input tokens")
        add.add_argument("--output-price", help="USD per million output tokens")
        add.add_argument(
            "--max-campaign-budget",
            help="USD one campaign may spend on it (default: kept; 50.00 for a new provider)",
        )
        add.add_argument(
            "--max-run-budget",
            help="USD one variant may spend on one repository ('none' removes; default: kept)",
        )
        sub.add_parser("ls", help="list providers (never their keys)")
        rm = sub.add_parser("rm", help="remove a provider")
        rm.add_argument("name")

    def handle(self, *args, **options):
        actor = self._actor(options["user"])
        try:
            if options["action"] == "add":
                self._add(options, actor)
            elif options["action"] == "rm":
                provider_remove(name=options["name"], actor=actor)
                self.stdout.write(f"removed {options['name']}")
            else:
                self._list(actor)
        except ConvoyError as exc:
            where = f"{exc.field}: " if exc.field else ""
            raise CommandError(f"{where}{exc.message}") from None

    def _actor(self, username: str | None) -> User:
        users = User.objects.filter(is_active=True).order_by("id")
        if username:
            users = users.filter(username=username)
        user = next((u for u in users if user_can(u, CAPABILITY)), None)
        if user is None:
            raise CommandError("no active admin found (pass --user NAME of an admin)")
        return user

    def _add(self, options, actor) -> None:
        key = None
        if options["key_env"]:
            key = os.environ.get(options["key_env"])
            if not key:
                raise CommandError(f"--key-env: ${options['key_env']} is not set")
        elif options["key_stdin"]:
            key = sys.stdin.readline().strip()
        provider = provider_set(
            name=options["name"],
            api_style=options["style"],
            base_url=options["base_url"],
            key=key,
            allowed_models=[m for m in options["models"].split(",") if m.strip()],
            input_usd_per_mtok=options["input_price"],
            output_usd_per_mtok=options["output_price"],
            max_campaign_budget_usd=options["max_campaign_budget"],
            max_run_budget_usd=_run_ceiling(options["max_run_budget"]),
            actor=actor,
        )
        self.stdout.write(
            f"{provider.name}: {provider.api_style} {provider.base_url} "
            f"(${provider.input_usd_per_mtok}/${provider.output_usd_per_mtok} per M tokens; "
            f"{_ceilings(provider)})"
        )

    def _list(self, actor) -> None:
        for p in providers_for_user(user=actor):
            models = ",".join(p.allowed_models) or "any model"
            self.stdout.write(
                f"{p.name}\t{p.api_style}\t{p.base_url}\t{models}\t"
                f"in ${p.input_usd_per_mtok}/M\tout ${p.output_usd_per_mtok}/M\t{_ceilings(p)}"
            )


def _run_ceiling(value: str | None):
    if value is None:
        return KEEP
    return None if value.strip().lower() == "none" else value


def _ceilings(provider) -> str:
    run = provider.max_run_budget_usd
    return (
        f"ceilings ${provider.max_campaign_budget_usd}/campaign, "
        f"{f'${run}' if run is not None else 'none'}/variant"
    )
