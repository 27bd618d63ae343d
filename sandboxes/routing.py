"""Websocket URLs of the sandboxes app: the live log socket and the sandbox page's socket."""

from django.urls import path

from sandboxes.consumers import SandboxLogConsumer
from sandboxes.page_socket import SandboxPageConsumer

websocket_urlpatterns = [
    path("ws/sandboxes/<int:sandbox_id>/logs/", SandboxLogConsumer.as_asgi()),
    path("ws/sandboxes/<int:sandbox_id>/page/", SandboxPageConsumer.as_asgi()),
]
