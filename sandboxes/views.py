"""Sandbox pages: the admin list, a sandbox's detail (with its live log) and terminate, and the
Backends page (each backend, what it enforces, its credentials set or not, a connection test)."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from sandboxes.backend_status import backend_connection_test, backends_status
from sandboxes.backends import LOCAL_BACKENDS
from sandboxes.models import SandboxState
from sandboxes.selectors import (
    backend_isolation,
    sandbox_commands,
    sandbox_get_for_user,
    sandbox_snapshots,
    sandboxes_for_user,
)
from sandboxes.services import sandbox_terminate

LIVE = [SandboxState.CREATING, SandboxState.RUNNING]


@login_required
def sandbox_list_page(request):
    show_all = request.GET.get("all") == "1"
    rows = sandboxes_for_user(user=request.user, states=None if show_all else LIVE)
    context = {"sandboxes": rows, "show_all": show_all}
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


def _summary(sandbox) -> dict:
    return {
        "sandbox": sandbox,
        "isolation": backend_isolation(sandbox.backend),
        "local": sandbox.backend in LOCAL_BACKENDS,
        "live": sandbox.state in LIVE,
    }


@login_required
@require_POST
def sandbox_terminate_view(request, pk: int):
    sandbox = sandbox_get_for_user(user=request.user, pk=pk, action="terminate")
    reason = "terminated from the sandbox page"
    sandbox_terminate(sandbox=sandbox, reason=reason, actor=request.user)
    if request.htmx:
        return render(request, "sandboxes/detail.html#summary", _summary(sandbox))
    return redirect("sandbox-detail", pk=sandbox.pk)


@login_required
def backends_page(request):
    context = {"backends": backends_status(user=request.user), "result": None}
    return render(request, "sandboxes/backends.html", context)


@login_required
@require_POST
def backend_test_view(request, name: str):
    result = backend_connection_test(name=name, actor=request.user)
    backends = backends_status(user=request.user)
    if request.htmx:
        [backend] = [b for b in backends if b.name == name]
        return render(request, "sandboxes/backends.html#backend", {"b": backend, "result": result})
    return render(request, "sandboxes/backends.html", {"backends": backends, "result": result})
