"""A signed-in user's own notification socket: pre-rendered HTML pushed by tasks."""

from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.sockets import UserSocketsMixin, user_sockets_join, user_sockets_leave


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


class UserEventsConsumer(UserSocketsMixin, AsyncWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        if await user_sockets_join(self, user) is None:  # deactivated since the session was read
            await self.close(code=4401)
            return
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        await user_sockets_leave(self)

    async def html_push(self, event):
        await self.send(text_data=event["html"])
