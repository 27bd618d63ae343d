"""Pages for people: the dashboard landing page, login refusals and CSRF failures."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def dashboard(request):
    return render(request, "accounts/dashboard.html")


def csrf_failure(request, reason: str = ""):
    return render(request, "accounts/csrf_failure.html", {"reason": reason}, status=403)
