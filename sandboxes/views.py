"""Sandbox pages: the admin list, a sandbox's detail (with its live log) and terminate, and the
Backends page (each backend, what it enforces, its credentials set or not, a connection test)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import capability_require, user_can
from campaigns.environment import (
    image_keys_in_use,
    image_remove_unused,
    image_users,
    images_prune,
)
from sandboxes.backend_status import backend_connection_test, backends_status
from sandboxes.backends import LOCAL_BACKENDS
from sandboxes.images.selectors import image_get, image_log_tail, image_require_view, images_list
from sandboxes.models import ImageState, SandboxState
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


# --- the Images page (campaign images; reads campaigns' use of them) ---------------------
ADMIN_CAPABILITY = "sandbox_view"  # admins only: managers may list images, not remove them


def _rows() -> list[dict]:
    images = list(images_list())
    users = image_users(keys=[i.key for i in images])
    in_use = image_keys_in_use()
    return [
        {"image": i, "campaigns": users.get(i.key, []), "in_use": i.key in in_use} for i in images
    ]


@login_required
def images_page(request):
    image_require_view(user=request.user)
    context = {"rows": _rows(), "can_admin": user_can(request.user, ADMIN_CAPABILITY)}
    return render(request, "sandboxes/images.html", context)


@login_required
def image_log_page(request, key: str):
    image_require_view(user=request.user)
    image = image_get(key=key)
    context = {"image": image, "log": image_log_tail(image=image)}
    return render(request, "sandboxes/images_log.html", context)


@login_required
def image_remove_view(request, key: str):
    """GET asks for confirmation; POST removes (refused while the image is in use)."""
    capability_require(user=request.user, capability=ADMIN_CAPABILITY)
    image = image_get(key=key)
    if request.method == "POST":
        image_remove_unused(key=image.key, actor=request.user)
        messages.success(request, f"Image {image.key[:12]} removed.")
        return redirect("images")
    return render(request, "sandboxes/images_confirm.html", {"remove": image})


@login_required
def images_prune_view(request):
    """GET lists what prune would remove; POST removes it."""
    capability_require(user=request.user, capability=ADMIN_CAPABILITY)
    if request.method == "POST":
        removed = images_prune(actor=request.user)
        messages.success(request, f"{len(removed)} unused image(s) removed.")
        return redirect("images")
    doomed = [
        r["image"] for r in _rows() if not r["in_use"] and r["image"].state != ImageState.BUILDING
    ]
    return render(request, "sandboxes/images_confirm.html", {"prune": doomed})
