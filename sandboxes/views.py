"""Sandbox pages: the admin list, a sandbox's detail (with its live log) and terminate."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import user_can
from core.errors import PermissionDenied
from sandboxes.backends import LOCAL_BACKENDS
from sandboxes.backends.base import SandboxError
from sandboxes.models import SandboxState
from sandboxes.selectors import (
    backend_isolation,
    sandbox_commands,
    sandbox_get_for_user,
    sandbox_list,
    sandbox_snapshots,
)
from sandboxes.services import sandbox_terminate

LIVE = [SandboxState.CREATING, SandboxState.RUNNING]


@login_required
def sandbox_list_page(request):
    if not user_can(request.user, "sandbox_view"):
        raise PermissionDenied("Only admins may list sandboxes.", capability="sandbox_view")
    show_all = request.GET.get("all") == "1"
    context = {"sandboxes": sandbox_list(states=None if show_all else LIVE), "show_all": show_all}
    template = "sandboxes/sandboxes.html#rows" if request.htmx else "sandboxes/sandboxes.html"
    return render(request, template, context)


@login_required
def sandbox_detail(request, pk: int):
    sandbox = sandbox_get_for_user(user=request.user, pk=pk)
    context = {
        **_summary(sandbox),
        "commands": sandbox_commands(sandbox=sandbox),
        "snapshots": sandbox_snapshots(sandbox=sandbox),
    }
    return render(request, "sandboxes/detail.html", context)


def _summary(sandbox, error: str = "") -> dict:
    return {
        "sandbox": sandbox,
        "isolation": backend_isolation(sandbox.backend),
        "local": sandbox.backend in LOCAL_BACKENDS,
        "live": sandbox.state in LIVE,
        "error": error,
    }


@login_required
@require_POST
def sandbox_terminate_view(request, pk: int):
    sandbox = sandbox_get_for_user(user=request.user, pk=pk, write=True)
    try:
        sandbox_terminate(
            sandbox=sandbox, reason="terminated from the sandbox page", actor=request.user
        )
    except SandboxError as exc:
        context = _summary(sandbox, f"Could not terminate: {exc}")
        return render(request, "sandboxes/detail.html#summary", context, status=409)
    if request.htmx:
        return render(request, "sandboxes/detail.html#summary", _summary(sandbox))
    return redirect("sandbox-detail", pk=sandbox.pk)
