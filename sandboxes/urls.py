from django.urls import path

from sandboxes import log_views

urlpatterns = [
    path("sandboxes/<int:pk>/log.txt", log_views.sandbox_log_raw, name="sandbox_log_raw"),
]
