"""A user's open websockets, closed when the user is deactivated or their role changes.

Every consumer checks its user when the socket opens; one opened before a deactivation or a
role change kept streaming (a sandbox's log, its page) to someone who may no longer see it. Each
consumer joins its user's `user_sockets_group`; `user_sockets_close` closes every socket there,
and a client that reconnects is checked afresh (a deactivated user is not signed in any more).
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.db import transaction

logger = logging.getLogger(__name__)

CLOSE_REVOKED = 4403


def user_sockets_group(user_id: int) -> str:
    return f"user.{user_id}.sockets"


def _user_current(user_id: int) -> User | None:
    return User.objects.filter(pk=user_id, is_active=True).first()


async def user_sockets_join(consumer, user) -> User | None:
    """Join the user's sockets group, then read the user afresh; a consumer checks access with
    the user this returns, and only then accepts. None: they may no longer connect.

    In this order a deactivation or role change at any moment of the handshake closes the
    socket: one made before the join shows in the fresh read (the scope's user was read before,
    its permissions cached), one made after it reaches the group. Joining after the access
    check, as the consumers did, missed a change made in between.
    """
    consumer.user_sockets = user_sockets_group(user.pk)
    await consumer.channel_layer.group_add(consumer.user_sockets, consumer.channel_name)
    return await database_sync_to_async(_user_current)(user.pk)


async def user_sockets_leave(consumer) -> None:
    group = getattr(consumer, "user_sockets", "")
    if group:
        await consumer.channel_layer.group_discard(group, consumer.channel_name)


class UserSocketsMixin:
    """The handler of `user_sockets_close`'s message, for consumers that joined the group."""

    async def user_revoked(self, event) -> None:
        await self.close(code=CLOSE_REVOKED)


def user_sockets_close(*, user_id: int) -> None:
    """Close the user's open sockets once the current transaction commits (best effort: a
    socket the layer cannot reach ends with its connection)."""

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(user_sockets_group(user_id), {"type": "user.revoked"})
        except Exception:
            logger.warning("could not close the sockets of user %s", user_id, exc_info=True)

    transaction.on_commit(send)
