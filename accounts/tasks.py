"""Tasks for people: push a notification to a user's open pages."""

from asgiref.sync import async_to_sync
from celery import shared_task
from channels.layers import get_channel_layer
from django.template.loader import render_to_string

from accounts.consumers import user_group


@shared_task
def user_notify(user_id: int, text: str) -> None:
    html = render_to_string("accounts/dashboard.html#notice", {"text": text})
    async_to_sync(get_channel_layer().group_send)(
        user_group(user_id), {"type": "html.push", "html": html}
    )
