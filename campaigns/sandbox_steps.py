"""How a campaign sandbox's commands read to people: the user's step instead of Convoy's wrapper
(`bash -c ( __convoy_step=$1 … --convoy-step-done-… )`), which spec step each command was, its
exit code, and, for the command that failed its run or variant, the error signature's group.

The sandbox page (a web edge) asks here; sandboxes know nothing about campaign specs. As a
command starts and finishes, `sandbox_commands_push` renders the page's "commands" partial and
sends it to the page's socket (sandboxes.page_socket), after the row is committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.template.loader import render_to_string

from campaigns.models import Campaign, RepoRun, Variant
from sandboxes.models import Sandbox, SandboxCommand, SandboxState
from sandboxes.page_socket import sandbox_page_group, sandbox_page_watched
from sandboxes.selectors import sandbox_commands

logger = logging.getLogger(__name__)

WRAPPER_NAME = "convoy-step"  # $0 of the pipeline's transform wrapper (campaigns.pipeline)


def command_shown(argv: list[str]) -> str:
    """The command as the user wrote it: the step inside Convoy's wrappers."""
    if len(argv) >= 5 and argv[:2] == ["bash", "-c"] and argv[3] == WRAPPER_NAME:
        return argv[4]
    if len(argv) == 3 and argv[:2] == ["bash", "-c"]:
        return argv[2]
    return " ".join(argv)


def commands_shown(*, ids: list[int]) -> dict[int, str]:
    """{command id: the command as the user wrote it} (the log's `$ …` lines use it)."""
    rows = SandboxCommand.objects.filter(pk__in=ids).values_list("pk", "argv")
    return {pk: command_shown(list(argv or [])) for pk, argv in rows}


def _step_labels(spec: dict, variant_name: str | None) -> dict[str, str]:
    """{step command: "setup[0]" …} for this sandbox's variant (first label wins)."""
    labels: dict[str, str] = {}
    variant = next((v for v in spec.get("variants", []) if v["name"] == variant_name), {})
    phases = [
        ("setup", spec.get("setup") or []),
        ("transform", variant.get("transform") or spec.get("transform") or []),
        ("validate", spec.get("validate") or []),
    ]
    for phase, steps in phases:
        for i, step in enumerate(steps):
            if isinstance(step, dict):
                labels.setdefault(str(step.get("run", "")), f"{phase}[{i}]")
    return labels


def sandbox_command_rows(*, sandbox, commands: list) -> list[dict]:
    """One row per command: shown command, step label, exit code, duration, and whether it is
    the step that failed its variant or run (with that failure's signature, for its group)."""
    campaign = variant = run = None
    if sandbox.campaign_id:
        campaign = Campaign.objects.filter(pk=sandbox.campaign_id).only("spec").first()
    if sandbox.variant_id:
        variant = Variant.objects.filter(pk=sandbox.variant_id).only("name", "error").first()
    if sandbox.run_id:
        run = (
            RepoRun.objects.filter(pk=sandbox.run_id)
            .only("campaign_id", "error", "error_signature")
            .first()
        )
    labels = _step_labels(campaign.spec, variant.name if variant else None) if campaign else {}
    failed_label = ""
    for error in (variant.error if variant else "", run.error if run else ""):
        if error:
            failed_label = error.split(" ", 1)[0]
            break
    rows = []
    for c in commands:
        shown = command_shown(list(c.argv or []))
        label = labels.get(shown, "")
        failing = bool(label) and label == failed_label and (c.exit_code or c.timed_out)
        rows.append(
            {
                "command": c,
                "shown": shown,
                "step": label,
                "failing": failing,
                "signature": run.error_signature if failing and run else "",
                "campaign_id": run.campaign_id if run else None,
            }
        )
    return rows


def sandbox_commands_push(*, sandbox_id: int, loop: asyncio.AbstractEventLoop) -> None:
    """Send the sandbox page's command table, as it is now, to whoever has the page open
    (through the channel layer, on `loop`: the push thread's own)."""
    if not sandbox_page_watched(sandbox_id=sandbox_id):
        return  # nobody has the page open: nothing to render (one Redis GET per command)
    sandbox = Sandbox.objects.filter(pk=sandbox_id).first()
    if sandbox is None:
        return
    rows = sandbox_command_rows(sandbox=sandbox, commands=sandbox_commands(sandbox=sandbox))
    live = sandbox.state in (SandboxState.CREATING, SandboxState.RUNNING)
    context = {"sandbox": sandbox, "commands": rows, "live": live, "oob": True}
    html = render_to_string("sandboxes/detail.html#commands", context)
    loop.run_until_complete(
        get_channel_layer().group_send(
            sandbox_page_group(sandbox_id), {"type": "page.html", "html": html}
        )
    )


class _Pusher:
    """Pushes leave the command's path: one thread per process sends them, in order (each
    renders the table as it is when sent, so a late one is never older than the one before).

    The thread keeps its database connection and its event loop (with it, the channel layer's
    Redis connection) while pushes keep coming, and ends, closing them, after `IDLE_S` without
    one; the next push starts a new thread. Opening both for each push cost a PostgreSQL
    backend and a Redis connection per command start and finish while a page was open."""

    IDLE_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[asyncio.AbstractEventLoop], None]) -> Future:
        """Run `job(loop)` on the push thread after the jobs before it."""
        done: Future = Future()
        with self._lock:
            self._jobs.put((job, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="convoy-push", daemon=True)
                self._thread.start()
        return done

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    job, done = self._jobs.get(timeout=self.IDLE_S)
                except queue.Empty:
                    with self._lock:
                        if self._jobs.empty():  # else a job came in meanwhile: serve it
                            self._thread = None
                            return
                    continue
                try:
                    done.set_result(job(loop))
                except BaseException as exc:
                    done.set_exception(exc)
        finally:
            loop.close()
            connection.close()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._jobs = queue.SimpleQueue()
        self._thread = None  # the parent's thread does not exist in the child


_pusher = _Pusher()
os.register_at_fork(after_in_child=_pusher._after_fork)


def sandbox_command_saved(sender, instance, **kwargs) -> None:
    """post_save of a SandboxCommand (started or finished): push once it is committed, from
    the push thread (even asking whether anyone watches is a Redis round trip). A push that
    fails is logged; it never disturbs the command."""
    sandbox_id = instance.sandbox_id

    def push(loop: asyncio.AbstractEventLoop) -> None:
        try:
            sandbox_commands_push(sandbox_id=sandbox_id, loop=loop)
        except Exception:
            logger.exception("could not push the commands of sandbox %s", sandbox_id)
            connection.close()  # a connection that failed is not kept for the next push

    transaction.on_commit(lambda: _pusher.submit(push))
