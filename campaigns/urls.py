"""Campaign page URLs (the API lives in campaigns/api.py, mounted by config/api.py)."""

from django.urls import path, re_path

from campaigns import secret_views, views

urlpatterns = [
    path("campaigns/", views.campaign_list, name="campaign-list"),
    path("campaigns/new/", views.campaign_new, name="campaign-new"),
    path("campaigns/validate/", views.campaign_validate, name="campaign-validate"),
    path("campaigns/secrets/", secret_views.secret_list, name="secret-list"),
    path("campaigns/secrets/grants/", secret_views.secret_grant_create, name="secret-grant"),
    path(
        "campaigns/secrets/grants/<int:grant_id>/revoke/",
        secret_views.secret_grant_revoke,
        name="secret-grant-revoke",
    ),
    path(
        "campaigns/secrets/leaks/<int:variant_id>/override/",
        secret_views.secret_leak_override,
        name="secret-leak-override",
    ),
    path("campaigns/<str:pk>/", views.campaign_detail, name="campaign-detail"),
    path("campaigns/<str:pk>/edit/", views.campaign_edit, name="campaign-edit"),
    re_path(
        r"^campaigns/(?P<pk>[\w-]+)/(?P<action>launch|cancel|retry|preview)/$",
        views.campaign_action,
        name="campaign-action",
    ),
    path("campaigns/<str:pk>/runs/<int:run_id>/", views.run_detail, name="run-detail"),
]
