"""The parts are wired end to end: a Celery task reaches a connected websocket client."""

import pytest
from channels.testing import WebsocketCommunicator

from accounts.tasks import user_notify
from config.asgi import application

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]


async def _connect(user):
    communicator = WebsocketCommunicator(
        application, "/ws/me/", headers=[(b"origin", b"http://127.0.0.1")]
    )
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    return communicator, connected


async def test_task_message_reaches_websocket_client(celery_worker, manager):
    communicator, connected = await _connect(manager)
    assert connected
    try:
        user_notify.delay(manager.pk, "campaign <b>alpha</b> finished")
        html = await communicator.receive_from(timeout=20)
        assert "campaign &lt;b&gt;alpha&lt;/b&gt; finished" in html
        assert 'hx-swap-oob="beforeend"' in html
    finally:
        await communicator.disconnect()


async def test_anonymous_socket_is_refused(db):
    from django.contrib.auth.models import AnonymousUser

    _communicator, connected = await _connect(AnonymousUser())
    assert not connected
