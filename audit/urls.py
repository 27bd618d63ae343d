"""Page URLs of the audit trail (mounted under /audit/)."""

from django.urls import path

from audit import views

app_name = "audit"
urlpatterns = [
    path("", views.events, name="events"),
    path("events/<uuid:event_id>/", views.event_detail, name="event"),
    path("campaigns/<int:campaign_id>/", views.campaign_history, name="campaign"),
    path("sandboxes/<int:sandbox_id>/", views.sandbox_history, name="sandbox"),
    path("verify/", views.verify, name="verify"),
    path("export.ndjson", views.export_bundle, name="export-bundle"),
    path("export.csv", views.export_csv, name="export-csv"),
]
