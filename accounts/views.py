"""Pages for people: the dashboard landing page, the people admin page, login refusals and
CSRF failures."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.forms import PersonForm, RoleForm

PEOPLE = "accounts/people.html"


@login_required
def dashboard(request):
    return render(request, "accounts/dashboard.html")


def csrf_failure(request, reason: str = ""):
    return render(request, "accounts/csrf_failure.html", {"reason": reason}, status=403)


@login_required
def people(request):
    everyone = selectors.people_for_user(user=request.user)
    form = PersonForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                person = services.user_create(**form.cleaned_data, actor=request.user)
            except services.AccountError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            else:
                messages.success(request, f"{person.username} can now sign in.")
                return redirect("people")
        status = 400
    else:
        status = 200
    context = {"people": everyone, "form": form, "roles": RoleForm.base_fields["role"].choices}
    return render(request, PEOPLE, context, status=status)


@login_required
@require_POST
def person_change(request, pk: int):
    """A role change or a (de)activation; htmx gets the person's row back."""
    person = selectors.person_get_for_user(user=request.user, pk=pk)
    error = ""
    try:
        if "active" in request.POST:
            services.user_active_set(
                user=person, active=request.POST["active"] == "1", actor=request.user
            )
        else:
            form = RoleForm(request.POST)
            if not form.is_valid():
                raise services.AccountError("role", form.errors["role"][0])
            services.user_role_set(user=person, role=form.cleaned_data["role"], actor=request.user)
    except services.AccountError as exc:
        error = exc.message
    person = selectors.person_get_for_user(user=request.user, pk=pk)
    status = 400 if error else 200
    if request.htmx:
        context = {"person": person, "error": error, "roles": RoleForm.base_fields["role"].choices}
        return render(request, f"{PEOPLE}#person-row", context, status=status)
    (messages.error if error else messages.success)(request, error or f"{person.username} saved.")
    return redirect("people")
