"""The sandbox page's socket: its command table pushed as commands start and finish.

The consumer only authenticates, checks access with the same helper as the page
(`sandbox_get_for_user`), joins the sandbox's page group and forwards the HTML the producer
rendered (`campaigns.sandbox_steps.sandbox_commands_push`, the page's own "commands" partial as
an out-of-band swap).
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from core.errors import ConvoyError
from sandboxes.selectors import sandbox_get_for_user

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


def sandbox_page_group(sandbox_id: int) -> str:
    return f"sandbox-page-{sandbox_id}"


class SandboxPageConsumer(AsyncWebsocketConsumer):
    group: str = ""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        sandbox_id = self.scope["url_route"]["kwargs"]["sandbox_id"]
        try:
            await database_sync_to_async(sandbox_get_for_user)(user=user, pk=sandbox_id)
        except ConvoyError:  # no such sandbox, or not one this user may read: same answer
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group = sandbox_page_group(sandbox_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def page_html(self, event):
        await self.send(text_data=event["html"])
