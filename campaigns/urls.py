"""Campaign page URLs (the API lives in campaigns/api.py, mounted by config/api.py)."""

from django.urls import path, re_path

from campaigns import views

urlpatterns = [
    path("campaigns/", views.campaign_list, name="campaign-list"),
    path("campaigns/new/", views.campaign_new, name="campaign-new"),
    path("campaigns/validate/", views.campaign_validate, name="campaign-validate"),
    path("campaigns/secrets/", views.secret_list, name="secret-list"),
    path("campaigns/<str:pk>/", views.campaign_detail, name="campaign-detail"),
    re_path(
        r"^campaigns/(?P<pk>[\w-]+)/(?P<action>launch|cancel|retry)/$",
        views.campaign_action,
        name="campaign-action",
    ),
    path("campaigns/<str:pk>/runs/<int:run_id>/", views.run_detail, name="run-detail"),
]
