"""Pages for people: the dashboard landing page, the people admin page, login refusals and
CSRF failures."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts import selectors
from accounts.forms import ROLE_CHOICES, PersonChangeForm, PersonForm
from campaigns.views import home

PEOPLE = "accounts/people.html"


# The landing page shows what needs the person (their campaigns, review queues, failures).
dashboard = home


def csrf_failure(request, reason: str = ""):
    return render(request, "accounts/csrf_failure.html", {"reason": reason}, status=403)


@login_required
def people(request):
    everyone = selectors.people_for_user(user=request.user)
    form = PersonForm(request.POST or None)
    if request.method == "POST":
        person = form.save(actor=request.user) if form.is_valid() else None
        if person is not None:
            messages.success(request, f"{person.username} can now sign in.")
            return redirect("people")
    status = 400 if form.errors else 200
    context = {"people": everyone, "form": form, "roles": ROLE_CHOICES}
    return render(request, PEOPLE, context, status=status)


@login_required
@require_POST
def person_change(request, pk: int):
    """A role change or a (de)activation; htmx gets the person's row back."""
    person = selectors.person_get_for_user(user=request.user, pk=pk)
    form = PersonChangeForm(request.POST)
    saved = form.is_valid() and form.save(person=person, actor=request.user) is not None
    error = "" if saved else form.first_error()
    person = selectors.person_get_for_user(user=request.user, pk=pk)
    status = 200 if saved else 400
    if request.htmx:
        context = {"person": person, "error": error, "roles": ROLE_CHOICES}
        return render(request, f"{PEOPLE}#person-row", context, status=status)
    (messages.success if saved else messages.error)(request, error or f"{person.username} saved.")
    return redirect("people")
