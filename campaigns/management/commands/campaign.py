"""`manage.py campaign apply|preview|status|diff|logs`: campaigns from the command line.

Every subcommand acts as one user (`--user`, else the operator identity: the first active user
whose role manages campaigns) and fetches through the same permission
helpers as the pages. Exit codes (README, "Command line"): 0 every run and validation passed,
1 something failed (the summary names the failing steps), 2 invalid spec or arguments,
3 timed out, 4 no such campaign or repository, or refused, 5 the campaign's state does not
allow it, 6 a revision was shown but not confirmed (`--yes`). `--json` prints one JSON
document (`logs`: one JSON object per line).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from accounts.roles import user_can
from agents.selectors import campaign_model_budget, campaign_model_line
from campaigns.models import Campaign, CampaignState
from campaigns.preview import PREVIEW_SAMPLE, campaign_preview
from campaigns.reports import (
    ACTIVE_OUTCOMES,
    baseline_compared,
    baseline_line,
    baseline_outcomes_of,
    campaign_runs_report,
    report_summary,
    run_sandboxes,
    variant_patches,
)
from campaigns.revisions import campaign_revise, revision_plan
from campaigns.sandbox_steps import commands_shown
from campaigns.selectors import campaign_counts, campaign_get_for_user, campaign_manage_check
from campaigns.services import campaign_create, campaign_launch, campaign_update
from campaigns.spec import CampaignSpecError, spec_parse
from config.embedded import embedded_worker_start
from core.errors import Conflict, ConvoyError, Invalid, NotFound, PermissionDenied
from sandboxes.logs import log_lines_after

EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, EXIT_REFUSED, EXIT_STATE, EXIT_UNCONFIRMED = (
    1,
    2,
    3,
    4,
    5,
    6,
)
POLL_S = 1.0
# The pipeline's marker between a transform step's output and the diff it reads after it.
STEP_DONE_RE = re.compile(r"^--convoy-step-done-[0-9a-f]+--$")


def _fail(message: str, code: int) -> CommandError:
    return CommandError(message, returncode=code)


class Command(BaseCommand):
    help = "Campaigns from the command line: apply, preview, status, diff, logs."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)

        def add(name: str, help_text: str):
            p = sub.add_parser(name, help=help_text)
            p.add_argument(
                "--user",
                help="Act as this user (default: the first active user whose role manages "
                "campaigns)",
            )
            p.add_argument("--json", action="store_true", help="Machine-readable output")
            return p

        apply = add("apply", "Create or update a campaign from a spec; launch; wait")
        apply.add_argument("file", help="The spec (YAML or JSON); '-' reads stdin")
        apply.add_argument("--launch", action="store_true", help="Launch it after saving")
        apply.add_argument(
            "--wait", action="store_true", help="Wait until every run is final (implies --launch)"
        )
        apply.add_argument("--yes", action="store_true", help="Apply a revision without asking")
        apply.add_argument("--timeout", type=float, default=3600, help="Seconds to wait at most")

        preview = add("preview", "Run a draft on a sample of its repositories (not a launch)")
        preview.add_argument("file", help="The spec (YAML or JSON) or '-' for stdin")
        preview.add_argument("--sample", type=int, default=PREVIEW_SAMPLE, help="Repositories")
        preview.add_argument("--timeout", type=float, default=3600, help="Seconds to wait at most")
        preview.add_argument("--no-wait", action="store_true", help="Start it and return")

        status = add("status", "Per repository and variant: state, outcome, diffstat, failures")
        status.add_argument("name", help="Campaign name or id")
        status.add_argument("repo", nargs="?", help="Only this repository (name or URL)")

        diff = add("diff", "Print the diffs (all repositories, or one)")
        diff.add_argument("name", help="Campaign name or id")
        diff.add_argument("repo", nargs="?", help="Only this repository (name or URL)")
        diff.add_argument("--variant", help="Only this variant")

        logs = add("logs", "Print a run's sandbox logs, following until it is final")
        logs.add_argument("name", help="Campaign name or id")
        logs.add_argument("repo", nargs="?", help="Only this repository (name or URL)")
        logs.add_argument("--variant", help="Only this variant's sandboxes")
        logs.add_argument("--no-follow", action="store_true", help="Print what is stored; exit")
        logs.add_argument("--timeout", type=float, default=3600, help="Seconds to follow at most")

    def handle(self, *args, **options):
        self.as_json = options["json"]
        actor = self._actor(options["user"])
        try:
            return getattr(self, f"_{options['action']}")(options, actor)
        except CampaignSpecError as exc:
            for error in exc.errors:
                self.stderr.write(f"{options.get('file', 'spec')}: {error}")
            raise _fail("invalid campaign spec", EXIT_INVALID) from None
        except (NotFound, PermissionDenied) as exc:
            raise _fail(exc.message, EXIT_REFUSED) from None
        except Conflict as exc:
            raise _fail(exc.message, EXIT_STATE) from None
        except Invalid as exc:
            raise _fail(exc.message, EXIT_INVALID) from None
        except ConvoyError as exc:
            raise _fail(exc.message, EXIT_FAILED) from None

    # --- who ---------------------------------------------------------------------------------
    def _actor(self, username: str | None) -> User:
        if username:
            user = User.objects.filter(username=username, is_active=True).first()
            if user is None:
                raise _fail(f"--user: no active user {username!r}", EXIT_REFUSED)
            return user
        user = next(
            (
                u
                for u in User.objects.filter(is_active=True).order_by("id")
                if user_can(u, "campaign_manage")
            ),
            None,
        )
        if user is None:
            raise _fail("no user may manage campaigns; create one or pass --user", EXIT_REFUSED)
        return user

    def _out(self, data) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str))

    # --- apply / preview ---------------------------------------------------------------------
    def _read(self, path: str) -> bytes | str:
        try:
            return sys.stdin.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise _fail(f"{path}: {exc.strerror}", EXIT_INVALID) from None

    def _save(self, text, actor, *, confirm: bool) -> tuple[Campaign, str]:
        """Create, update a draft, or (launched campaigns) apply a revision."""
        campaign_manage_check(user=actor)
        name = spec_parse(text).data["name"]
        existing = Campaign.objects.filter(name=name).first()
        if existing is None:
            return campaign_create(actor=actor, source=text), "created"
        existing = campaign_get_for_user(user=actor, pk=existing.pk, action="manage")
        if existing.state in (CampaignState.DRAFT, CampaignState.PREVIEWING):
            return campaign_update(campaign=existing, actor=actor, source=text), "updated"
        if existing.state == CampaignState.CANCELLED:
            raise Conflict(f"campaign {name} is cancelled; it takes no more changes")
        plan = revision_plan(campaign=existing, source=text, actor=actor)
        if plan["unchanged"]:
            return existing, "unchanged"
        if not confirm:
            self._plan_print(existing, plan)
            raise _fail("revision not applied: pass --yes to apply it", EXIT_UNCONFIRMED)
        revision = campaign_revise(campaign=existing, actor=actor, source=text)
        if not self.as_json:
            self._plan_print(existing, plan)
        existing.refresh_from_db()
        return existing, f"revised (revision {revision.number})"

    def _plan_print(self, campaign: Campaign, plan: dict) -> None:
        if self.as_json:
            self._out({k: v for k, v in plan.items() if k != "source"})
            return
        self.stdout.write(plan["spec_diff"].rstrip())
        what = "every variant" if plan["rerun_all"] else ", ".join(plan["changed_variants"])
        self.stdout.write(
            f"revision of {campaign.name}: re-runs {plan['runs_to_rerun']} run(s) "
            f"({what or 'no variant'}); {len(plan['new_repositories'])} new repositories; "
            f"new variants: {', '.join(plan['added_variants']) or 'none'}"
        )

    def _apply(self, options, actor) -> None:
        text = self._read(options["file"])
        campaign, how = self._save(text, actor, confirm=options["yes"])
        if not self.as_json:
            self.stdout.write(f"{how} campaign {campaign.name} (id {campaign.pk})")
        launch = options["launch"] or options["wait"]
        if launch and campaign.state in (CampaignState.DRAFT, CampaignState.PREVIEWING):
            campaign = campaign_launch(campaign=campaign, actor=actor)
            if not self.as_json:
                self.stdout.write(
                    f"launched over {campaign.runs.count()} repositories on {campaign.backend}"
                )
        if options["wait"]:
            self._wait(campaign, options["timeout"])
            return self._finish(campaign)
        if self.as_json:
            self._out(
                {"campaign": campaign.name, "id": campaign.pk, "state": campaign.state, "how": how}
            )

    def _preview(self, options, actor) -> None:
        text = self._read(options["file"])
        campaign, how = self._save(text, actor, confirm=False)
        campaign = campaign_preview(campaign=campaign, actor=actor, sample=options["sample"])
        if not self.as_json:
            self.stdout.write(
                f"{how} campaign {campaign.name}; previewing on {campaign.runs.count()} "
                "repositories (not launched)"
            )
        if options["no_wait"]:
            if self.as_json:
                self._out(
                    {
                        "campaign": campaign.name,
                        "state": campaign.state,
                        "sample": options["sample"],
                    }
                )
            return
        self._wait(campaign, options["timeout"])
        if not self.as_json:
            for diff in self._diffs(campaign, None, None):
                self._diff_print(diff)
        self._finish(campaign, preview=True)

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
                if line != last and not self.as_json:
                    self.stdout.write(f"  {counts['final']}/{counts['total']} final: {line}")
                    last = line
                if counts["final"] == counts["total"]:
                    return
                if time.monotonic() > deadline:
                    raise _fail(f"timed out after {timeout:.0f}s", EXIT_TIMEOUT)
                time.sleep(POLL_S)
        finally:
            if worker is not None:
                worker.stop()

    def _finish(self, campaign: Campaign, *, preview: bool = False) -> None:
        """The summary by outcome; exit 1 unless every run and validation passed."""
        runs = campaign_runs_report(campaign=campaign)
        summary = report_summary(runs)
        if self.as_json:
            campaign.refresh_from_db()
            self._out({"campaign": campaign.name, "state": campaign.state, **summary, "runs": runs})
        else:
            self._summary_print(summary, preview=preview)
        if not summary["ok"]:
            raise _fail("some runs or validations failed (see above)", EXIT_FAILED)

    def _summary_print(self, summary: dict, *, preview: bool = False) -> None:
        outcomes = ", ".join(f"{n} {name}" for name, n in summary["outcomes"].items())
        self.stdout.write(f"{'preview' if preview else 'summary'}: {outcomes}")
        for failure in summary["failing_steps"]:
            code = failure["exit_code"]
            why = f"exit {code}" if code is not None else "failed"
            self.stdout.write(
                f"  {failure['step']} `{failure['command']}` {why} in {len(failure['where'])}: "
                + ", ".join(failure["where"][:10])
                + (" …" if len(failure["where"]) > 10 else "")
            )
        if summary["ok"]:
            self.stdout.write(self.style.SUCCESS("every run and validation passed"))

    # --- status ------------------------------------------------------------------------------
    def _status(self, options, actor) -> None:
        campaign = campaign_get_for_user(user=actor, pk=options["name"])
        runs = campaign_runs_report(campaign=campaign, repository=options["repo"])
        if options["repo"] and not runs:
            raise NotFound(f"campaign {campaign.name} has no repository {options['repo']!r}")
        summary = report_summary(runs)
        counts = campaign_counts(campaign=campaign)["runs"]
        # each variant against its run's baseline, over the runs listed (one repository's with repo)
        against = baseline_outcomes_of(runs) if baseline_compared(campaign.spec) else None
        models = campaign_model_budget(  # None unless agent variants call models
            campaign_id=campaign.pk,
            spec=campaign.spec,
            remaining_runs=sum(counts.get(k, 0) for k in ("pending", "queued", "running")),
        )
        if self.as_json:
            self._out(
                {
                    "name": campaign.name,
                    "state": campaign.state,
                    "backend": campaign.backend,
                    "counts": counts,
                    "summary": summary,
                    "against_baseline": {r["outcome"]: r["count"] for r in against or []},
                    "runs": runs,
                    "models": models,
                }
            )
            return
        line = " ".join(f"{k}={v}" for k, v in counts.items() if v)
        self.stdout.write(f"{campaign.name}: {campaign.state} on {campaign.backend} ({line})")
        if models:
            self.stdout.write(f"  {campaign_model_line(models)}")
        if against:
            self.stdout.write(f"  {baseline_line(against)}")
        for run in runs:
            took = f"{run['duration_s']:.1f}s" if run["duration_s"] is not None else "-"
            self.stdout.write(f"  {run['repository']:<30} {run['state']:<10} {took:>8}")
            if run["failing_step"]:
                self._failure_print(run, indent="    ")
            for v in run["variants"]:
                took = f"{v['duration_s']:.1f}s" if v["duration_s"] is not None else "-"
                self.stdout.write(
                    f"    {v['name']:<20} {v['state']:<10} {v['outcome']:<18} {took:>8} "
                    f"{v['files_changed']} file(s) +{v['insertions']} -{v['deletions']}"
                )
                if v["failing_step"]:
                    self._failure_print(v, indent="      ")
        if summary["final"]:
            self._summary_print(summary)

    def _failure_print(self, row: dict, *, indent: str) -> None:
        code = row["exit_code"]
        self.stdout.write(
            f"{indent}failed at {row['failing_step']}"
            + (f" `{row['failing_command']}`" if row.get("failing_command") else "")
            + (f", exit code {code}" if code is not None else "")
        )
        for text in row["output_tail"]:
            self.stdout.write(f"{indent}| {text}")

    # --- diff --------------------------------------------------------------------------------
    def _diffs(self, campaign: Campaign, repo: str | None, variant: str | None) -> list[dict]:
        runs = campaign_runs_report(campaign=campaign, repository=repo)
        if repo and not runs:
            raise NotFound(f"campaign {campaign.name} has no repository {repo!r}")
        patches = variant_patches(run_ids=[r["run_id"] for r in runs])
        out = []
        for run in runs:
            for v in run["variants"]:
                if variant and v["name"] != variant:
                    continue
                patch = patches.get((run["run_id"], v["name"]), "")
                out.append(
                    {
                        "repository": run["repository"],
                        "variant": v["name"],
                        "outcome": v["outcome"],
                        "diff_sha256": v["diff_sha256"],
                        "files_changed": v["files_changed"],
                        "insertions": v["insertions"],
                        "deletions": v["deletions"],
                        "patch": patch,
                    }
                )
        return out

    def _diff_print(self, d: dict) -> None:
        self.stdout.write(
            f"# {d['repository']} · {d['variant']} · {d['outcome']} · "
            f"{d['files_changed']} file(s) +{d['insertions']} -{d['deletions']}"
        )
        if d["patch"]:
            self.stdout.write(d["patch"].rstrip("\n"))
        else:
            self.stdout.write("# (no changes)")

    def _diff(self, options, actor) -> None:
        campaign = campaign_get_for_user(user=actor, pk=options["name"])
        diffs = self._diffs(campaign, options["repo"], options["variant"])
        if self.as_json:
            self._out({"campaign": campaign.name, "diffs": diffs})
            return
        for d in diffs:
            self._diff_print(d)

    # --- logs --------------------------------------------------------------------------------
    def _logs(self, options, actor) -> None:
        campaign = campaign_get_for_user(user=actor, pk=options["name"])
        repo, variant = options["repo"], options["variant"]
        if repo and not campaign_runs_report(campaign=campaign, repository=repo):
            raise NotFound(f"campaign {campaign.name} has no repository {repo!r}")
        seen: dict[int, int] = {}
        self.internal: set[int] = set()
        self.shown: dict[int, str] = {}
        deadline = time.monotonic() + options["timeout"]
        while True:
            runs = campaign_runs_report(campaign=campaign, repository=repo)
            final = report_summary(runs)["final"] and all(
                r["outcome"] not in ACTIVE_OUTCOMES for r in runs
            )
            printed = 0
            for box in run_sandboxes(run_ids=[r["run_id"] for r in runs], variant=variant):
                printed += self._log_lines(box, seen)
            if options["no_follow"] or (final and not printed):
                break
            if time.monotonic() > deadline:
                raise _fail(f"timed out after {options['timeout']:.0f}s", EXIT_TIMEOUT)
            if not printed:
                time.sleep(POLL_S)
        if not options["no_follow"] and not self.as_json:
            failures = [r for r in runs if r["failing_step"]] + [
                v for r in runs for v in r["variants"] if v["failing_step"]
            ]
            self.stdout.write(f"# final: {len(runs)} run(s), {len(failures)} failure(s)")

    def _shown(self, command_id: int) -> str:
        if command_id not in self.shown:
            self.shown.update(commands_shown(ids=[command_id]))
        return self.shown.get(command_id, "")

    def _log_lines(self, box: dict, seen: dict[int, int]) -> int:
        lines = log_lines_after(sandbox_id=box["sandbox_id"], after=seen.get(box["sandbox_id"], 0))
        for line in lines:
            if line.command_id in self.internal:
                continue  # the diff Convoy read after the step: not the user's output
            if STEP_DONE_RE.match(line.text.strip()):
                self.internal.add(line.command_id)
                continue
            text = line.text
            if line.stream == "system" and text.startswith("$ ") and line.command_id:
                text = "$ " + self._shown(line.command_id)  # the user's step, not the wrapper
            if self.as_json:
                self.stdout.write(
                    json.dumps({**box, "seq": line.seq, "stream": line.stream, "text": text})
                )
            else:
                self.stdout.write(f"[{box['repository']} {box['label']}] {text.rstrip()}")
        if lines:
            seen[box["sandbox_id"]] = lines[-1].seq
        return len(lines)
