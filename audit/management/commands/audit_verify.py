"""Verify the audit trail (database or exported bundle) and name the event behind each finding."""

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.export import audit_verify_bundle
from audit.keys import AuditKeyError, installation_verifying_key, public_key_load
from audit.verify import audit_verify, audit_verify_record


class Command(BaseCommand):
    help = (
        "Walk the hash chain and the signed checkpoints; print each finding with its seq, "
        "event_id and kind; exit 0 when the trail is intact, 1 otherwise."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--from-checkpoint", type=int, metavar="N", help="start at signed checkpoint N"
        )
        parser.add_argument("--bundle", type=Path, metavar="FILE", help="an exported NDJSON bundle")
        parser.add_argument(
            "--jobs",
            type=int,
            default=min(4, os.cpu_count() or 1),
            metavar="N",
            help="processes for a long chain in PostgreSQL (default: CPUs, at most 4)",
        )
        parser.add_argument(
            "--public-key",
            type=Path,
            metavar="FILE",
            help="the Ed25519 public key to trust (PEM or hex); default: this installation's",
        )
        parser.add_argument(
            "--trust-bundle-key",
            action="store_true",
            help="check a bundle against the key inside it: proves only that it is "
            "self-consistent (anyone can re-sign a bundle with a key of their own)",
        )

    def handle(self, *args, from_checkpoint, bundle, public_key, trust_bundle_key, jobs, **options):
        try:
            key = public_key_load(public_key.read_bytes()) if public_key else None
        except (OSError, AuditKeyError) as exc:
            raise CommandError(f"--public-key: {exc}") from exc
        if trust_bundle_key and (bundle is None or key is not None):
            raise CommandError("--trust-bundle-key: only with --bundle and without --public-key")
        if bundle is not None:
            if from_checkpoint is not None:
                raise CommandError("--from-checkpoint: not supported with --bundle")
            if key is None and not trust_bundle_key:
                key = installation_verifying_key()
                if key is None:
                    raise CommandError(
                        "--public-key: required: this installation has no audit key to trust; "
                        "give the exporting installation's public key (or --trust-bundle-key to "
                        "check only that the bundle is self-consistent)"
                    )
            try:
                with bundle.open(encoding="utf-8") as lines:
                    report = audit_verify_bundle(lines=lines, public_key=key)
            except OSError as exc:
                raise CommandError(f"--bundle: cannot read {bundle}: {exc}") from exc
            except ValueError as exc:
                raise CommandError(f"--bundle: {exc}") from exc
        else:
            report = audit_verify(from_checkpoint=from_checkpoint, public_key=key, jobs=jobs)
            audit_verify_record(report=report)
        for finding in report.findings:
            self.stdout.write(finding.line())
        summary = (
            f"{report.checked} links checked, chain size {report.size}, "
            f"{report.checkpoints_valid}/{report.checkpoints} checkpoints valid, "
            f"key {report.key_id}"
        )
        if trust_bundle_key:
            summary += " (the bundle's own key: self-consistent only, not proof of origin)"
        if report.ok:
            self.stdout.write(f"OK: {summary}")
            return
        self.stderr.write(f"FAILED: {len(report.findings)} finding(s); {summary}")
        raise SystemExit(1)
