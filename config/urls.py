"""Top-level URLs: pages of each app, the API and the auth pages."""

from django.urls import include, path

from config.api import api

urlpatterns = [
    path("", include("accounts.urls")),
    path("", include("sandboxes.urls")),
    path("", include("campaigns.urls")),
    path("", include("review.urls")),
    path("", include("agents.urls")),
    path("audit/", include("audit.urls")),
    path("api/v1/", api.urls),
]
