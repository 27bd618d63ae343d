"""A socket opened before its user was deactivated, or changed role, is closed: the consumers
checked the user only when the socket opened, and a deactivated reviewer kept receiving a
sandbox's log as it was printed."""

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import connections

from accounts.passwords import user_password_change
from accounts.services import user_active_set, user_role_set
from accounts.sockets import CLOSE_REVOKED
from config.routing import websocket_urlpatterns
from sandboxes.models import Sandbox
from tests.factories import PASSWORD, user_make

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture(autouse=True)
async def consumer_connections_closed(transactional_db):
    yield
    await database_sync_to_async(connections.close_all)()


async def _open(user, path):
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    return comm


def _signed_out(user) -> None:
    from django.test import Client

    client = Client()
    client.force_login(user)
    client.logout()


@pytest.mark.parametrize(
    "change", ["deactivated", "role changed", "password changed", "signed out"]
)
async def test_a_users_open_sockets_close_when_they_lose_access(admin_user, change):
    rob = await database_sync_to_async(user_make)(role="reviewer", username="rob")
    sandbox = await database_sync_to_async(Sandbox.objects.create)(
        backend="bwrap", campaign_id=1, state="running"
    )
    log = await _open(rob, f"/ws/sandboxes/{sandbox.pk}/logs/?after=0")
    page = await _open(rob, f"/ws/sandboxes/{sandbox.pk}/page/")
    if change == "deactivated":
        await database_sync_to_async(user_active_set)(user=rob, active=False, actor=admin_user)
    elif change == "role changed":
        await database_sync_to_async(user_role_set)(user=rob, role="manager", actor=admin_user)
    elif change == "password changed":  # after a suspected compromise, say
        await database_sync_to_async(user_password_change)(
            user=rob, old_password=PASSWORD, new_password="a new passphrase 7 dogs", actor=rob
        )
    else:
        await database_sync_to_async(_signed_out)(rob)
    for comm in (log, page):
        closed = await comm.receive_output(timeout=5)
        while closed["type"] != "websocket.close":  # a catch-up frame may come first
            closed = await comm.receive_output(timeout=5)
        assert closed["code"] == CLOSE_REVOKED
        await comm.wait()
