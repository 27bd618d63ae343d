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


async def _closed_with(comm) -> int:
    message = await comm.receive_output(timeout=5)
    while message["type"] != "websocket.close":  # a catch-up frame may come first
        message = await comm.receive_output(timeout=5)
    return message["code"]


@pytest.mark.parametrize("socket", ["logs", "page"])
async def test_a_deactivation_during_the_access_check_closes_the_socket(
    admin_user, monkeypatch, socket
):
    """The consumers checked access, then joined the group that closes a user's sockets: a
    deactivation in between went to a group the socket was not in yet, and it stayed open."""
    from sandboxes import consumers, page_socket

    rob = await database_sync_to_async(user_make)(role="reviewer", username="rob")
    sandbox = await database_sync_to_async(Sandbox.objects.create)(
        backend="bwrap", campaign_id=1, state="running"
    )
    module = consumers if socket == "logs" else page_socket
    check = module.sandbox_get_for_user

    def deactivated_while_checking(*, user, pk):
        user_active_set(user=rob, active=False, actor=admin_user)
        return check(user=user, pk=pk)

    monkeypatch.setattr(module, "sandbox_get_for_user", deactivated_while_checking)
    comm = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/sandboxes/{sandbox.pk}/{socket}/?after=0"
    )
    comm.scope["user"] = await database_sync_to_async(type(rob).objects.get)(pk=rob.pk)
    connected, _ = await comm.connect()
    assert connected  # the check passed: rob was active when it read him
    assert await _closed_with(comm) == CLOSE_REVOKED
    await comm.wait()


@pytest.mark.parametrize(
    "path", ["/ws/me/", "/ws/sandboxes/{pk}/logs/", "/ws/sandboxes/{pk}/page/"]
)
async def test_a_user_deactivated_after_their_session_was_read_is_not_connected(admin_user, path):
    """The handshake read the user from the session before the socket joined the group that a
    deactivation closes: deactivated in between, they were connected with what was read."""
    rob = await database_sync_to_async(user_make)(role="reviewer", username="rob")
    sandbox = await database_sync_to_async(Sandbox.objects.create)(
        backend="bwrap", campaign_id=1, state="running"
    )
    as_read = await database_sync_to_async(type(rob).objects.get)(pk=rob.pk)
    await database_sync_to_async(user_active_set)(user=rob, active=False, actor=admin_user)
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path.format(pk=sandbox.pk))
    comm.scope["user"] = as_read
    connected, code = await comm.connect()
    assert not connected and code == 4401
    await comm.wait()
