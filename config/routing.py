"""Websocket routes of every app, mounted under /ws/."""

from accounts.routing import websocket_urlpatterns as accounts_ws
from sandboxes.routing import websocket_urlpatterns as sandboxes_ws

websocket_urlpatterns = [*accounts_ws, *sandboxes_ws]
