"""Sandbox pages: the admin list, a sandbox's detail (with its live log) and terminate, and the
Backends page (each backend, what it enforces, its credentials set or not, a connection test)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import capability_require, user_can
from campaigns.environment import (
    image_keys_in_use,
    image_remove_unused,
    image_users,
    images_prune,
)
from campaigns.listing import ListQuery
from campaigns.sandbox_steps import sandbox_command_rows
from core.errors import Invalid
from sandboxes.backend_status import backend_connection_test, backends_status
from sandboxes.backends import LOCAL_BACKENDS
from sandboxes.egress.sandbox import sandbox_egress_stats
from sandboxes.images.selectors import (
    image_get,
    image_log_since,
    image_require_view,
    images_list,
)
from sandboxes.models import ImageState, Sandbox, SandboxState
from sandboxes.selectors import (
    backend_isolation,
    sandbox_commands,
    sandbox_get_for_user,
    sandbox_snapshots,
)
from sandboxes.services import sandbox_terminate

LIVE = [SandboxState.CREATING, SandboxState.RUNNING]


SANDBOX_SORTS = {
    "created": "-id",
    "backend": "backend",
    "state": "state",
    "campaign": "campaign_id",
}
SANDBOX_PAGE_SIZE = 50


def _sandbox_rows(query: ListQuery, *, show_all: bool):
    """Sandboxes matching the search (id, backend, external id, owner kind, campaign id, the
    person it runs for), live ones unless show_all, sorted and paged."""
    rows = Sandbox.objects.select_related("on_behalf_of", "from_snapshot")
    if not show_all:
        rows = rows.filter(state__in=LIVE)
    if query.state in SandboxState.values:
        rows = rows.filter(state=query.state)
    if query.q:
        match = (
            Q(backend__icontains=query.q)
            | Q(external_id__icontains=query.q)
            | Q(owner_kind__icontains=query.q)
            | Q(on_behalf_of__username__icontains=query.q)
        )
        if query.q.isdigit():
            match |= Q(pk=int(query.q)) | Q(campaign_id=int(query.q))
        rows = rows.filter(match)
    rows = rows.order_by(SANDBOX_SORTS[query.sort], "-id")
    return Paginator(rows, SANDBOX_PAGE_SIZE).get_page(query.page)


@login_required
def sandbox_list_page(request):
    capability_require(
        user=request.user, capability="sandbox_view", message="Only admins may list sandboxes."
    )
    show_all = request.GET.get("all") == "1"
    query = ListQuery.from_params(request.GET, sorts=SANDBOX_SORTS)
    page = _sandbox_rows(query, show_all=show_all)
    context = {
        "sandboxes": page,
        "page": page,
        "query": query,
        "show_all": show_all,
        "states": SandboxState.values,
    }
    template = "sandboxes/sandboxes.html#rows" if request.htmx else "sandboxes/sandboxes.html"
    return render(request, template, context)


@login_required
def sandbox_detail(request, pk: int):
    """The sandbox; while it runs, htmx polls its header and command table (same partials)."""
    sandbox = sandbox_get_for_user(user=request.user, pk=pk)
    commands = sandbox_commands(sandbox=sandbox)
    context = {
        **_summary(sandbox),
        "commands": sandbox_command_rows(sandbox=sandbox, commands=commands),
        "snapshots": sandbox_snapshots(sandbox=sandbox),
    }
    target = request.htmx.target if request.htmx else None
    partials = {"sandbox-summary": "summary", "sandbox-commands": "commands"}
    template = "sandboxes/detail.html"
    if target in partials:
        template = f"{template}#{partials[target]}"
    return render(request, template, context)


def _summary(sandbox) -> dict:
    return {
        "sandbox": sandbox,
        "isolation": backend_isolation(sandbox.backend),
        "local": sandbox.backend in LOCAL_BACKENDS,
        "live": sandbox.state in LIVE,
        # The egress proxy's connections (local engines only; cloud engines report none).
        "egress": sandbox_egress_stats(sandbox=sandbox)
        if sandbox.backend in LOCAL_BACKENDS and sandbox.network == "allowlist"
        else None,
        "lifetime_ms": (
            int((sandbox.terminated_at - sandbox.created_at).total_seconds() * 1000)
            if sandbox.terminated_at
            else None
        ),
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


def _log_offset(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise Invalid("offset: a byte position in the log, 0 or more", field="offset")
    return int(raw)


@login_required
def image_log_page(request, key: str):
    """The build log; while the image builds, the page polls with the byte offset it has
    and gets back only the lines written since (so a reload or a dropped poll resumes)."""
    image_require_view(user=request.user)
    image = image_get(key=key)
    offset = _log_offset(request.GET.get("offset"))
    log, next_offset = image_log_since(image=image, offset=offset)
    context = {"image": image, "log": log, "offset": next_offset}
    if request.htmx:
        return render(request, "sandboxes/images_log.html#log-update", context)
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
