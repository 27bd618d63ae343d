"""The sandbox page's socket: while someone has the page open, the command table is pushed as
each command starts and finishes (from the worker process's push thread, off the command's path),
and nothing is rendered for a page nobody watches."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import connection, connections

from campaigns import sandbox_steps
from config.routing import websocket_urlpatterns
from sandboxes.backends.base import SandboxSpec
from sandboxes.page_socket import sandbox_page_watched
from sandboxes.services import sandbox_create, sandbox_exec, sandbox_terminate

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture(autouse=True)
async def consumer_connections_closed(transactional_db):
    yield
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
def sandbox(transactional_db):
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
    yield sandbox
    sandbox_terminate(sandbox=sandbox, reason="test finished")


def _exec(sandbox, script: str) -> None:
    try:
        sandbox_exec(sandbox=sandbox, argv=["sh", "-c", script], timeout_s=60)
    finally:
        connection.close()


async def test_the_open_page_hears_each_command_start_and_finish(sandbox, admin_user):
    comm = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/sandboxes/{sandbox.pk}/page/"
    )
    comm.scope["user"] = admin_user
    assert (await comm.connect())[0]
    assert await database_sync_to_async(sandbox_page_watched)(sandbox_id=sandbox.pk)

    await asyncio.to_thread(_exec, sandbox, "sleep 0.3; echo page-push-1")

    tables = []
    while not tables or "exit 0" not in tables[-1]:
        tables.append(await comm.receive_from(timeout=30))
    await comm.disconnect()
    assert 'data-testid="commands"' in tables[-1]
    assert "page-push-1" in tables[-1]
    # The start was pushed too: the table then showed the command running.
    assert any("page-push-1" in t and "state-running" in t for t in tables[:-1])


async def test_a_page_nobody_watches_renders_nothing(sandbox, monkeypatch):
    rendered = []
    monkeypatch.setattr(sandbox_steps, "render_to_string", lambda *a, **k: rendered.append(a) or "")
    await asyncio.to_thread(_exec, sandbox, "true")
    # Both pushes went to the push thread, which runs in order: once a later job has run,
    # they have, and nothing was rendered.
    await asyncio.wait_for(asyncio.wrap_future(sandbox_steps._pusher.submit(lambda: None)), 30)
    assert rendered == []
