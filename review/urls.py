"""Review page URLs: dashboard, queue, bulk review, changesets, a run's comparison and decisions."""

from django.urls import path, re_path

from review import downloads, views

urlpatterns = [
    path("campaigns/<str:pk>/dashboard/", views.dashboard, name="review-dashboard"),
    path("campaigns/<str:pk>/review/", views.review_queue, name="review-queue"),
    path("campaigns/<str:pk>/review/bulk/", views.bulk_review, name="review-bulk"),
    path("campaigns/<str:pk>/review/bulk/approve/", views.bulk_approve, name="review-bulk-approve"),
    path("campaigns/<str:pk>/review/publish/", views.publish_approved, name="review-publish-all"),
    path("campaigns/<str:pk>/changesets/", views.changesets, name="review-changesets"),
    path("campaigns/<str:pk>/failures/retry/", views.retry_group, name="review-retry-group"),
    path("campaigns/<str:pk>/runs/<int:run_id>/compare/", views.run_compare, name="review-compare"),
    path(
        "campaigns/<str:pk>/runs/<int:run_id>/variants/<int:variant_id>/patch/",
        downloads.variant_patch_download,
        name="review-patch",
    ),
    path(
        "campaigns/<str:pk>/decisions/<int:decision_id>/undo/",
        views.decision_undo,
        name="review-undo",
    ),
    re_path(
        r"^campaigns/(?P<pk>[\w-]+)/runs/(?P<run_id>\d+)/(?P<action>pick|approve|reject|publish)/$",
        views.run_decide,
        name="review-decide",
    ),
]
