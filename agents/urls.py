"""Agent pages: model providers, a variant's transcript (page and JSON Lines)."""

from django.urls import path

from agents import views

urlpatterns = [
    path("agents/providers/", views.providers, name="agents-providers"),
    path(
        "agents/providers/<slug:name>/delete/",
        views.provider_delete,
        name="agents-provider-delete",
    ),
    path("agents/variants/<int:pk>/transcript/", views.transcript, name="agents-transcript"),
    path(
        "agents/variants/<int:pk>/transcript.jsonl",
        views.transcript_jsonl,
        name="agents-transcript-jsonl",
    ),
]
