"""The live log socket: stored backlog after `?after=<seq>`, then live batches, never a gap.

The consumer joins the sandbox's group before reading the backlog, so nothing published while
it reads is missed; live batches at or below the last seq it sent are dropped, and a batch that
would leave a gap (the channel layer lost or delayed something) makes it catch up from storage.
A slow reader never holds up the command: the producer only publishes to the layer and never
waits for any consumer.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.loader import render_to_string

from sandboxes.logs import log_group, log_last_seq, log_line_html, log_lines_after
from sandboxes.selectors import sandbox_get_for_user

CATCH_UP_CHUNK = 2000
IDLE_CHECK_S = 2.0  # how often an idle socket checks storage for lines the layer never brought

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_BAD_REQUEST = 4400


def _lines_after(sandbox_id: int, after: int) -> tuple[list[str], int]:
    lines = log_lines_after(sandbox_id=sandbox_id, after=after, limit=CATCH_UP_CHUNK)
    return [log_line_html(line) for line in lines], (lines[-1].seq if lines else after)


class SandboxLogConsumer(AsyncWebsocketConsumer):
    sandbox_id: int = 0
    group: str = ""
    last_sent: int = 0

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        sandbox_id = self.scope["url_route"]["kwargs"]["sandbox_id"]
        try:
            await database_sync_to_async(sandbox_get_for_user)(user=user, pk=sandbox_id)
        except (Http404, PermissionDenied):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        raw_after = (query.get("after") or ["0"])[0] or "0"
        if not raw_after.isdigit():
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        self.sandbox_id = sandbox_id
        self.last_sent = int(raw_after)
        self.send_lock = asyncio.Lock()
        self.group = log_group(sandbox_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        async with self.send_lock:
            await self.catch_up()
        self.idle_task = asyncio.ensure_future(self.idle_check())

    async def disconnect(self, code):
        task = getattr(self, "idle_task", None)
        if task is not None:
            task.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def log_batch(self, event):
        async with self.send_lock:
            first, last = event["first"], event["last"]
            if last <= self.last_sent:
                return
            if first > self.last_sent + 1:
                await self.catch_up()  # the layer lost or reordered something: storage has it
                return
            await self.send_lines(event["lines"][self.last_sent + 1 - first :], last)

    async def catch_up(self) -> None:
        """Send everything stored after last_sent, in chunks. Call with send_lock held."""
        while True:
            rendered, last = await database_sync_to_async(_lines_after)(
                self.sandbox_id, self.last_sent
            )
            if not rendered:
                return
            await self.send_lines(rendered, last)
            if len(rendered) < CATCH_UP_CHUNK:
                return

    async def send_lines(self, rendered: list[str], last: int) -> None:
        html = render_to_string(
            "sandboxes/log_panel.html#log-push",
            {"sandbox_id": self.sandbox_id, "lines_html": "".join(rendered), "last_seq": last},
        )
        await self.send(text_data=html)
        self.last_sent = last

    async def idle_check(self) -> None:
        """Catch up lines whose live batch never came (a layer may drop under load)."""
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            stored = await database_sync_to_async(log_last_seq)(sandbox_id=self.sandbox_id)
            if stored > self.last_sent:
                async with self.send_lock:
                    await self.catch_up()
