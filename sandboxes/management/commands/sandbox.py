"""`manage.py sandbox exec|list|reap`: run one command in a fresh sandbox, see and reap them."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from sandboxes.backends import BACKENDS
from sandboxes.backends.base import ExecOutput, NetworkPolicy, SandboxError, SandboxSpec
from sandboxes.backends.local import TIMEOUT_EXIT
from sandboxes.models import SandboxState
from sandboxes.reaper import sandboxes_reap
from sandboxes.selectors import sandbox_list
from sandboxes.services import sandbox_create, sandbox_exec, sandbox_terminate


class Command(BaseCommand):
    help = "Operate sandboxes: `exec -- CMD…` in a fresh one, `list` them, `reap` stale ones."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        ex = sub.add_parser("exec", help="run one command in a fresh sandbox, then remove it")
        ex.add_argument("--backend", choices=sorted(BACKENDS), default=None)
        ex.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
        ex.add_argument("--memory-mb", type=int, default=1024)
        ex.add_argument("--network", choices=["none", "open"], default="none")
        ex.add_argument("--keep", action="store_true", help="leave the sandbox running")
        ex.add_argument("argv", nargs="+", metavar="CMD")
        ls = sub.add_parser("list", help="list sandboxes (running ones unless --all)")
        ls.add_argument("--all", action="store_true")
        sub.add_parser("reap", help="terminate sandboxes past their deadline or owner")

    def handle(self, *args, action, **options):
        return getattr(self, f"_{action}")(**options)

    def _exec(self, *, backend, timeout, memory_mb, network, keep, argv, **_):
        if timeout <= 0:
            raise CommandError("--timeout: must be more than 0 seconds")
        if memory_mb < 16:
            raise CommandError("--memory-mb: must be at least 16")
        spec = SandboxSpec(
            memory_mb=memory_mb,
            network=NetworkPolicy(network),
            timeout_s=int(timeout) + 60,
            labels={"convoy_cli": "1"},
        )
        try:
            sandbox = sandbox_create(spec=spec, backend=backend, owner_kind="cli")
        except SandboxError as exc:
            raise CommandError(f"could not start a sandbox: {exc}") from exc
        sys.stderr.write(f"sandbox {sandbox.pk}\n")
        sys.stderr.flush()

        def forward(event: ExecOutput) -> None:
            out = sys.stdout.buffer if event.stream == "stdout" else sys.stderr.buffer
            out.write(event.data)
            out.flush()

        try:
            command = sandbox_exec(
                sandbox=sandbox, argv=argv, timeout_s=timeout, on_output=forward, last=not keep
            )
        except SandboxError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if not keep:
                sandbox_terminate(sandbox=sandbox, reason="cli command finished")
        if command.timed_out:
            sys.stderr.write(f"convoy: timed out after {timeout:g}s\n")
            sys.exit(TIMEOUT_EXIT)
        sys.exit(command.exit_code)

    def _list(self, *, all, **_):
        rows = sandbox_list(states=None if all else [SandboxState.CREATING, SandboxState.RUNNING])
        self.stdout.write(f"{'ID':>6}  {'BACKEND':8} {'STATE':10} {'OWNER':14} {'CREATED':20} NOTE")
        for s in rows:
            owner = f"{s.owner_kind} {s.owner_id or ''}".strip() or "-"
            note = "UNSAFE process backend" if s.unsafe else s.terminated_reason
            created = s.created_at.strftime("%Y-%m-%d %H:%M:%S")
            self.stdout.write(
                f"{s.pk:>6}  {s.backend:8} {s.state:10} {owner:14} {created:20} {note}"
            )

    def _reap(self, **_):
        reaped = sandboxes_reap()
        for s in reaped:
            self.stdout.write(f"reaped sandbox {s.pk}: {s.terminated_reason}")
        self.stderr.write(f"{len(reaped)} sandboxes reaped")
