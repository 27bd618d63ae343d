"""The embedded shape's channel layer: in-memory, safe to call from worker threads.

Channels' InMemoryChannelLayer keeps asyncio queues that belong to the server's event loop;
a Celery task running in another thread (with its own loop from async_to_sync) would wake
them from the wrong loop, and the consumer might not notice for a long time. This layer
remembers the loop that receives and hands every send over to it.
"""

import asyncio

from channels.layers import InMemoryChannelLayer


class EmbeddedChannelLayer(InMemoryChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("capacity", 10_000)
        super().__init__(*args, **kwargs)
        self._owner_loop: asyncio.AbstractEventLoop | None = None

    async def receive(self, channel):
        self._owner_loop = asyncio.get_running_loop()
        return await super().receive(channel)

    async def _on_owner_loop(self, coro):
        owner = self._owner_loop
        running = asyncio.get_running_loop()
        if owner is None or owner is running or owner.is_closed() or not owner.is_running():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, owner))

    async def send(self, channel, message):
        return await self._on_owner_loop(super().send(channel, message))

    async def group_send(self, group, message):
        return await self._on_owner_loop(super().group_send(group, message))

    async def group_add(self, group, channel):
        return await self._on_owner_loop(super().group_add(group, channel))

    async def group_discard(self, group, channel):
        return await self._on_owner_loop(super().group_discard(group, channel))
