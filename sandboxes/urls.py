"""Page URLs of sandboxes: list, detail, terminate, the raw log download and the Backends page."""

from django.urls import path

from sandboxes import log_views, views

urlpatterns = [
    path("sandboxes/", views.sandbox_list_page, name="sandbox-list"),
    path("sandboxes/backends/", views.backends_page, name="sandbox-backends"),
    path(
        "sandboxes/backends/<slug:name>/test", views.backend_test_view, name="sandbox-backend-test"
    ),
    path("images/", views.images_page, name="images"),
    path("images/prune", views.images_prune_view, name="images-prune"),
    path("images/<str:key>/log", views.image_log_page, name="image-log"),
    path("images/<str:key>/remove", views.image_remove_view, name="image-remove"),
    path("sandboxes/<int:pk>/", views.sandbox_detail, name="sandbox-detail"),
    path("sandboxes/<int:pk>/terminate", views.sandbox_terminate_view, name="sandbox-terminate"),
    path("sandboxes/<int:pk>/log.txt", log_views.sandbox_log_raw, name="sandbox_log_raw"),
]
