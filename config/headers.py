"""Signed-in pages and downloads are not kept by browsers or shared caches.

Diffs, the audit trail, secrets' names and the patch, log and CSV downloads were served
without `Cache-Control`: the browser could show them from its cache or history after sign-out.
A response to a signed-in request that says nothing about caching gets `private, no-store`.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_cache_control


class PrivateNoStoreMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        user = getattr(request, "user", None)
        signed_in = user is not None and user.is_authenticated
        if (signed_in or request.headers.get("Authorization")) and not response.has_header(
            "Cache-Control"
        ):
            patch_cache_control(response, private=True, no_store=True)
        return response
