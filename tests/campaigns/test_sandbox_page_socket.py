"""The sandbox page's socket: a command's start and finish push the page's command table (the
user's step, its exit code) to people who may see the sandbox; others are refused."""

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import connections

from config.routing import websocket_urlpatterns
from sandboxes.models import Sandbox, SandboxCommand
from tests.factories import campaign_make, user_make

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]

WRAPPER = '( __convoy_step=$1; set --; eval "$__convoy_step" ); status=$?'


@pytest.fixture(autouse=True)
async def consumer_connections_closed(transactional_db):
    yield
    await database_sync_to_async(connections.close_all)()


def _setup():
    manager = user_make(role="manager", username="mia")
    outsider = user_make(role=None, username="otto")
    campaign = campaign_make(owner=manager)
    campaign.spec["transform"] = [{"run": "sed -i s/a/b/ x"}]
    campaign.save()
    sandbox = Sandbox.objects.create(backend="bwrap", state="running", campaign_id=campaign.pk)
    return manager, outsider, sandbox


def _connect(user, sandbox) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/sandboxes/{sandbox.pk}/page/"
    )
    communicator.scope["user"] = user
    return communicator


async def test_command_start_and_finish_are_pushed():
    manager, outsider, sandbox = await database_sync_to_async(_setup)()
    refused = _connect(outsider, sandbox)
    connected, code = await refused.connect()
    assert not connected and code == 4403

    page = _connect(manager, sandbox)
    connected, _ = await page.connect()
    assert connected
    argv = ["bash", "-c", WRAPPER, "convoy-step", "sed -i s/a/b/ x"]
    command = await database_sync_to_async(SandboxCommand.objects.create)(
        sandbox=sandbox, argv=argv
    )
    started = await page.receive_from(timeout=20)
    assert started.lstrip().startswith('<section class="card" id="sandbox-commands"')
    assert 'hx-swap-oob="true"' in started and "__convoy_step" not in started
    assert '<code data-testid="command-shown">sed -i s/a/b/ x</code>' in started
    assert "transform[0]" in started and "running" in started

    command.exit_code, command.duration_ms = 3, 250
    await database_sync_to_async(command.save)()
    finished = await page.receive_from(timeout=20)
    assert "exit 3" in finished and 'data-duration-ms="250"' in finished
    await page.disconnect()
