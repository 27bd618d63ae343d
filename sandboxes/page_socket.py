"""The sandbox page's socket: its command table pushed as commands start and finish.

The consumer only authenticates, checks access with the same helper as the page
(`sandbox_get_for_user`), joins the sandbox's page group and forwards the HTML the producer
rendered (`campaigns.sandbox_steps.sandbox_commands_push`, the page's own "commands" partial as
an out-of-band swap).
"""

from __future__ import annotations

import threading
from collections import Counter

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from accounts.sockets import UserSocketsMixin, user_sockets_join, user_sockets_leave
from core.errors import ConvoyError
from sandboxes.selectors import sandbox_get_for_user

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
WATCH_TTL_S = 6 * 3600  # a count a dead web process left behind stops mattering after this


def sandbox_page_group(sandbox_id: int) -> str:
    return f"sandbox-page-{sandbox_id}"


# Who has a sandbox page open: counted per sandbox (in Redis when REDIS_URL is set, shared by
# the web and worker processes; else in this process), so that a worker renders and sends the
# command table only when somebody watches. Rendering it for every command of every run cost
# five queries and a template per command start and finish (issue 20).
_local_watchers: Counter[int] = Counter()
_client_lock = threading.Lock()
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    with _client_lock:
        if _client is None:
            _client = redis.Redis.from_url(settings.REDIS_URL)
        return _client


def _watch_key(sandbox_id: int) -> str:
    return f"{settings.REDIS_PREFIX}:page-watch:{sandbox_id}"


def sandbox_page_watch(*, sandbox_id: int, delta: int) -> None:
    """A page for this sandbox opened (+1) or closed (-1)."""
    if not settings.REDIS_URL:
        _local_watchers[sandbox_id] += delta
        if _local_watchers[sandbox_id] <= 0:
            del _local_watchers[sandbox_id]
        return
    pipe = _redis().pipeline()
    pipe.incrby(_watch_key(sandbox_id), delta)
    pipe.expire(_watch_key(sandbox_id), WATCH_TTL_S)
    pipe.execute()


def sandbox_page_watched(*, sandbox_id: int) -> bool:
    if not settings.REDIS_URL:
        return _local_watchers[sandbox_id] > 0
    return int(_redis().get(_watch_key(sandbox_id)) or 0) > 0


class SandboxPageConsumer(UserSocketsMixin, AsyncWebsocketConsumer):
    group: str = ""

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
        self.sandbox_id = int(sandbox_id)
        await database_sync_to_async(sandbox_page_watch)(sandbox_id=self.sandbox_id, delta=1)
        self.group = sandbox_page_group(sandbox_id)  # from here disconnect undoes the watch
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await user_sockets_leave(self)
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await database_sync_to_async(sandbox_page_watch)(sandbox_id=self.sandbox_id, delta=-1)

    async def page_html(self, event):
        await self.send(text_data=event["html"])
