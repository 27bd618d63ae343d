"""The live log socket, driven by real bubblewrap sandboxes through `sandbox_exec`.

Clients are channels' WebsocketCommunicator (both shapes) and, in the production shape, a real
websocket client talking to `manage.py serve` in another process, which hears the worker's
batches through Redis.
"""

import asyncio
import html
import random
import re
import threading

import pytest
import websockets
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.db import connection, connections
from django.test import Client

from config.routing import websocket_urlpatterns
from sandboxes.backends.base import SandboxSpec
from sandboxes.consumers import WINDOW
from sandboxes.models import LogLine
from sandboxes.services import sandbox_create, sandbox_exec, sandbox_terminate

LINE = re.compile(r'<div class="log-line log-(\w+)" data-seq="(\d+)"[^>]*>(.*?)</div>', re.S)
TAG = re.compile(r"<[^>]+>")
LINES = 100_000
RECEIVE_TIMEOUT = 60


@pytest.fixture(autouse=True)
async def consumer_connections_closed(transactional_db):
    """In-process consumers read the database from asgiref's worker thread; close it after."""
    yield
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
def sandbox(transactional_db):
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=900), backend="bwrap")
    yield sandbox
    sandbox_terminate(sandbox=sandbox, reason="test finished")


def parse(message: str) -> list[tuple[int, str, str]]:
    """(seq, stream, text as the reader sees it) for each line element of a pushed message."""
    return [
        (int(seq), stream, html.unescape(TAG.sub("", body)))
        for stream, seq, body in LINE.findall(message)
    ]


def start(sandbox, script: str, **kwargs) -> threading.Thread:
    """Run `sh -c script` in the sandbox from a worker-like thread, as a Celery task would."""

    def _run():
        try:
            sandbox_exec(sandbox=sandbox, argv=["sh", "-c", script], timeout_s=120, **kwargs)
            sandbox.refresh_from_db()
            thread.last_seq = sandbox.last_log_seq  # what a reader must end up with
        finally:
            connection.close()

    thread = threading.Thread(target=_run)
    thread.last_seq = None
    thread.start()
    return thread


def communicator(user, sandbox_id: int, after: int = 0, ack=False) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns),
        f"/ws/sandboxes/{sandbox_id}/logs/?after={after}" + ("&ack=1" if ack else ""),
    )
    comm.scope["user"] = user
    return comm


async def receive_until(comm, last_seq: int, into: list, *, stop_after: int | None = None):
    """Collect lines until `last_seq` arrives (or `stop_after` lines, to drop the connection)."""
    while not into or into[-1][0] < last_seq:
        into.extend(parse(await comm.receive_from(timeout=RECEIVE_TIMEOUT)))
        if stop_after is not None and len(into) >= stop_after:
            return


def output_of(lines):
    return [text for _, stream, text in lines if stream != "system"]


@pytest.mark.shapes("embedded", "production")
async def test_a_hundred_thousand_lines_arrive_complete_and_in_order(sandbox, admin_user):
    comm = communicator(admin_user, sandbox.pk)
    assert (await comm.connect())[0]
    runner = await asyncio.to_thread(start, sandbox, f"seq 1 {LINES}")
    await asyncio.to_thread(runner.join)
    lines: list = []
    await receive_until(comm, runner.last_seq, lines)
    await comm.disconnect()
    assert [seq for seq, _, _ in lines] == list(range(1, len(lines) + 1))
    assert lines[0][1:] == ("system", f"$ sh -c 'seq 1 {LINES}'")
    assert output_of(lines) == [str(i) for i in range(1, LINES + 1)]


@pytest.mark.shapes("embedded", "production")
async def test_reconnecting_after_the_last_seq_gives_exactly_the_output(sandbox, admin_user):
    expected = [f"line {i}" for i in range(1, 30_001)]
    script = 'i=0; while [ $i -lt 30000 ]; do i=$((i+1)); echo "line $i"; done'
    comm = communicator(admin_user, sandbox.pk)
    assert (await comm.connect())[0]
    runner = await asyncio.to_thread(start, sandbox, script)
    first: list = []
    await receive_until(comm, 10**9, first, stop_after=random.randint(1, 20_000))
    await comm.disconnect()
    await asyncio.to_thread(runner.join)
    comm = communicator(admin_user, sandbox.pk, after=first[-1][0])
    assert (await comm.connect())[0]
    second: list = []
    await receive_until(comm, runner.last_seq, second)
    await comm.disconnect()
    union = first + second
    assert [seq for seq, _, _ in union] == list(range(1, len(union) + 1))
    assert output_of(union) == expected


@pytest.mark.shapes("embedded", "production")
async def test_a_stalled_reader_gets_a_window_then_catches_up_from_storage(sandbox, admin_user):
    comm = communicator(admin_user, sandbox.pk, ack=True)
    assert (await comm.connect())[0]
    runner = await asyncio.to_thread(start, sandbox, "seq 1 30000")
    await asyncio.to_thread(runner.join)  # the command never waited for this reader
    lines: list = []
    rounds = acked = 0
    while not lines or lines[-1][0] < runner.last_seq:
        while not await comm.receive_nothing(timeout=0.5):
            lines.extend(parse(await comm.receive_from()))
        # Stalled: the server stops at the window rather than queueing the whole log for us.
        assert lines[-1][0] - acked <= WINDOW
        acked = lines[-1][0]
        await comm.send_json_to({"ack": acked})
        rounds += 1
    await comm.disconnect()
    assert rounds >= 3
    assert [seq for seq, _, _ in lines] == list(range(1, runner.last_seq + 1))
    assert output_of(lines) == [str(i) for i in range(1, 30_001)]


@pytest.mark.shapes("embedded", "production")
async def test_outsiders_and_anonymous_visitors_are_refused_at_connect(sandbox, outsider):
    for user, code in ((outsider, 4403), (AnonymousUser(), 4401)):
        comm = communicator(user, sandbox.pk)
        connected, close_code = await comm.connect()
        assert (connected, close_code) == (False, code)
    comm = communicator(outsider, 999_999)
    assert (await comm.connect()) == (False, 4403)


@pytest.mark.shapes("embedded", "production")
async def test_secret_values_are_masked_in_storage_and_on_the_wire(sandbox, admin_user):
    secret = "tok-5up3r-s3cret-9041"
    comm = communicator(admin_user, sandbox.pk)
    assert (await comm.connect())[0]
    runner = await asyncio.to_thread(
        start,
        sandbox,
        'echo "token is $API_TOKEN"; echo "$API_TOKEN" | rev | rev >&2; printf "%s" "$API_TOKEN"',
        secrets={"API_TOKEN": secret},
    )
    await asyncio.to_thread(runner.join)
    raw: list[str] = []
    last = runner.last_seq
    while not raw or parse(raw[-1])[-1][0] < last:
        raw.append(await comm.receive_from(timeout=RECEIVE_TIMEOUT))
    await comm.disconnect()
    wire = "".join(raw)
    texts = await database_sync_to_async(
        lambda: list(LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True))
    )()
    assert secret not in wire and secret not in "\n".join(texts)
    assert "token is [secret API_TOKEN]" in wire
    assert texts.count("[secret API_TOKEN]") == 2


@pytest.mark.shapes("embedded", "production")
async def test_html_in_the_output_arrives_escaped(sandbox, admin_user):
    comm = communicator(admin_user, sandbox.pk)
    assert (await comm.connect())[0]
    runner = await asyncio.to_thread(
        start,
        sandbox,
        "echo '<img src=x onerror=alert(1)>'; printf '\\033[31m<b>red</b>\\033[0m\\n'",
    )
    await asyncio.to_thread(runner.join)
    raw: list[str] = []
    last = runner.last_seq
    while not raw or parse(raw[-1])[-1][0] < last:
        raw.append(await comm.receive_from(timeout=RECEIVE_TIMEOUT))
    await comm.disconnect()
    wire = "".join(raw)
    assert "<img" not in wire and "<b>" not in wire
    assert "&lt;img src=x onerror=alert(1)&gt;" in wire
    assert "&lt;b&gt;red&lt;/b&gt;</span>" in wire  # coloured by markup of our own, still escaped


# --- A real socket to a running server (production shape: web and worker are separate) --------


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def socket_receive_until(ws, last_seq: int, into: list, *, stop_after=None):
    while not into or into[-1][0] < last_seq:
        into.extend(parse(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT)))
        if stop_after is not None and len(into) >= stop_after:
            return


def socket_connect(base_url: str, sandbox_id: int, cookie: str | None, after: int = 0, **kw):
    url = base_url.replace("http://", "ws://") + f"/ws/sandboxes/{sandbox_id}/logs/?after={after}"
    headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
    return websockets.connect(
        url, origin=base_url, additional_headers=headers, max_size=None, open_timeout=20, **kw
    )


def test_real_server_refuses_outsiders_masks_secrets_and_survives_reconnects(
    asgi_server, sandbox, admin_user, outsider
):
    """One server for the production-shape checks (starting one costs seconds on this machine)."""
    secret = "pw-0xDEADBEEF-hunter2"
    cookie, outsider_cookie = session_cookie(admin_user), session_cookie(outsider)

    async def refused_and_masked():
        for who in (outsider_cookie, None):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with socket_connect(asgi_server, sandbox.pk, who):
                    pass
            assert refused.value.response.status_code == 403
        raw: list[str] = []
        async with socket_connect(asgi_server, sandbox.pk, cookie) as ws:
            runner = await asyncio.to_thread(
                start, sandbox, 'echo "<i>$PW</i>"', secrets={"PW": secret}
            )
            await asyncio.to_thread(runner.join)
            while not raw or parse(raw[-1])[-1][0] < runner.last_seq:
                raw.append(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT))
        return "".join(raw), runner.last_seq

    async def hundred_thousand_lines(after: int):
        # Reader A: connected while the command prints, reading throughout; it drops out at a
        # random point and comes back with `after`.
        # Reader B: connected but not reading at all until the command has finished (its
        # client queue holds 2 messages, so the socket backs up); the command finishes anyway.
        first: list = []
        async with (
            socket_connect(asgi_server, sandbox.pk, cookie, after=after) as ws,
            socket_connect(asgi_server, sandbox.pk, cookie, after=after, max_queue=2) as paused,
        ):
            runner = await asyncio.to_thread(start, sandbox, f"seq 1 {LINES}")
            await socket_receive_until(ws, 10**9, first, stop_after=random.randint(1, 60_000))
            await ws.close()
            await asyncio.to_thread(runner.join)
            late: list = []
            await socket_receive_until(paused, runner.last_seq, late)
        second: list = []
        async with socket_connect(asgi_server, sandbox.pk, cookie, after=first[-1][0]) as ws:
            await socket_receive_until(ws, runner.last_seq, second)
        return first + second, late

    wire, before = asyncio.run(refused_and_masked())
    assert secret not in wire
    assert "&lt;i&gt;[secret PW]&lt;/i&gt;" in wire

    union, late = asyncio.run(hundred_thousand_lines(before))
    expected = [str(i) for i in range(1, LINES + 1)]
    for lines in (union, late):
        assert [seq for seq, _, _ in lines] == list(range(before + 1, before + len(lines) + 1))
        assert output_of(lines) == expected
