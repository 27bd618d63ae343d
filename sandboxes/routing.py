"""Websocket URLs of the sandboxes app: the live log socket."""

from django.urls import path

from sandboxes.consumers import SandboxLogConsumer

websocket_urlpatterns = [
    path("ws/sandboxes/<int:sandbox_id>/logs/", SandboxLogConsumer.as_asgi()),
]
