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
    await asyncio.wait_for(asyncio.wrap_future(sandbox_steps._pusher.submit(lambda loop: None)), 30)
    assert rendered == []


def _database_sessions() -> int:
    """Sessions PostgreSQL has opened on this test run's database so far."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def _redis_connections() -> int:
    """Connections the Redis server has accepted so far (this call's own included)."""
    import redis
    from django.conf import settings

    with redis.Redis.from_url(settings.REDIS_URL) as client:
        return client.info("stats")["total_connections_received"]


async def _table_with_all_done(comm, last: str) -> None:
    """Read pushed tables until one shows `last` and no command still running."""
    while True:
        table = await comm.receive_from(timeout=30)
        if last in table and "state-running" not in table:
            return


@pytest.mark.shapes("production")
async def test_pushes_to_an_open_page_reuse_their_connections(sandbox, admin_user):
    """While a page is open, every command's start and finish is pushed: the push thread keeps
    its database and Redis connections between pushes instead of opening new ones for each."""
    comm = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/sandboxes/{sandbox.pk}/page/"
    )
    comm.scope["user"] = admin_user
    assert (await comm.connect())[0]
    await asyncio.to_thread(_exec, sandbox, "echo warm-up")  # the push thread connects once
    await _table_with_all_done(comm, "warm-up")
    sessions, connections_made = (
        await database_sync_to_async(_database_sessions)(),
        await asyncio.to_thread(_redis_connections),
    )
    commands = 8
    for i in range(commands):
        await asyncio.to_thread(_exec, sandbox, f"echo push-{i}")
    await _table_with_all_done(comm, f"push-{commands - 1}")
    opened = await database_sync_to_async(_database_sessions)() - sessions
    redis_opened = await asyncio.to_thread(_redis_connections) - connections_made
    await comm.disconnect()
    # Each command is one database session of its own here (`_exec` closes its connection),
    # plus the reads above; the 16 pushes add none. Before, each push opened one of each.
    assert opened <= commands + 2, f"{opened} database sessions for {commands} commands"
    assert redis_opened <= 4, f"{redis_opened} Redis connections for {2 * commands} pushes"
