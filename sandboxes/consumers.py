"""The live log socket: stored backlog after `?after=<seq>`, then live batches, never a gap.

The consumer joins the sandbox's group before reading the backlog, so nothing published while
it reads is missed; live batches at or below the last seq it sent are dropped, and a batch that
would leave a gap (the channel layer lost or delayed something) makes it catch up from storage.

A slow reader never holds up the command: the producer only publishes and never waits for any
consumer. A client that acknowledges what it has shown (`?ack=1`, then `{"ack": <seq>}`
messages, as the log panel does) gets at most WINDOW unacknowledged lines; while it is further
behind, live batches are skipped and it is caught up from storage once it acknowledges again,
so a stalled browser costs the server nothing but a number.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from accounts.sockets import UserSocketsMixin, user_sockets_join, user_sockets_leave
from core.errors import ConvoyError
from core.ids import id_parse
from sandboxes.loglines import log_line_html
from sandboxes.logs import log_group, log_last_seq, log_lines_after
from sandboxes.selectors import sandbox_get_for_user

CATCH_UP_CHUNK = 2000
WINDOW = 10_000  # lines a client that acknowledges may have unacknowledged
IDLE_CHECK_S = 2.0  # how often an idle socket checks storage for lines the layer never brought

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_BAD_REQUEST = 4400


def _lines_after(sandbox_id: int, after: int) -> tuple[list[str], int]:
    lines = log_lines_after(sandbox_id=sandbox_id, after=after, limit=CATCH_UP_CHUNK)
    return [log_line_html(line) for line in lines], (lines[-1].seq if lines else after)


def _query_int(query: dict, name: str) -> int | None:
    raw = (query.get(name) or ["0"])[0] or "0"
    return id_parse(raw)


class SandboxLogConsumer(UserSocketsMixin, AsyncWebsocketConsumer):
    sandbox_id: int = 0
    group: str = ""
    last_sent: int = 0
    acked: int | None = None  # None: the client does not acknowledge; no window applies
    behind: bool = False
    last_batch_at: float = 0.0

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        # Joined before the check: a deactivation or role change from here on closes it.
        user = await user_sockets_join(self, user)
        if user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        sandbox_id = self.scope["url_route"]["kwargs"]["sandbox_id"]
        try:
            await database_sync_to_async(sandbox_get_for_user)(user=user, pk=sandbox_id)
        except ConvoyError:  # no such sandbox, or not one this user may read: same answer
            await self.close(code=CLOSE_FORBIDDEN)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        after, ack = _query_int(query, "after"), _query_int(query, "ack")
        if after is None or ack is None:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        self.sandbox_id = sandbox_id
        self.last_sent = after
        self.acked = after if ack else None
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
        await user_sockets_leave(self)

    async def receive(self, text_data=None, bytes_data=None):
        """`{"ack": <seq>}`: the client has shown every line up to seq."""
        try:
            seq = json.loads(text_data or "{}").get("ack")
        except (ValueError, AttributeError):
            return
        if self.acked is None or not isinstance(seq, int):
            return
        async with self.send_lock:
            self.acked = max(self.acked, min(seq, self.last_sent))
            if self.behind and self.room() >= WINDOW // 2:
                await self.catch_up()

    def room(self) -> int:
        if self.acked is None:
            return 1 << 62
        return WINDOW - (self.last_sent - self.acked)

    async def log_batch(self, event):
        self.last_batch_at = asyncio.get_running_loop().time()
        async with self.send_lock:
            first, last = event["first"], event["last"]
            if last <= self.last_sent:
                return
            if self.behind or self.room() < last - self.last_sent:
                self.behind = True  # storage has it; sent once the client catches up
                return
            if first > self.last_sent + 1:
                await self.catch_up()  # the layer lost or reordered something: storage has it
                return
            await self.send_lines(event["lines"][self.last_sent + 1 - first :], last)

    async def catch_up(self) -> None:
        """Send what is stored after last_sent, in chunks, as far as the window allows.

        Call with send_lock held.
        """
        self.behind = False
        while True:
            if self.room() < CATCH_UP_CHUNK:
                self.behind = True
                return
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
        """Catch up lines whose live batch never came (a layer may drop under load).

        Only after a quiet spell: while batches flow, storage is always a little ahead of them
        (a batch is stored before it is published), and reading it then would only duplicate
        the work of the live path.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            if self.behind or loop.time() - self.last_batch_at < IDLE_CHECK_S:
                continue  # waiting for the client's acknowledgement, or batches are flowing
            stored = await database_sync_to_async(log_last_seq)(sandbox_id=self.sandbox_id)
            if stored > self.last_sent:
                async with self.send_lock:
                    await self.catch_up()
