"""Pages for people: the dashboard landing page, the people admin page, one's own password and
API tokens, login refusals and CSRF failures."""

from django import forms
from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.password_validation import password_validators_help_text_html
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts import selectors
from accounts.auth import password_guess_failed, password_guesses_paused
from accounts.forms import (
    ROLE_CHOICES,
    PersonChangeForm,
    PersonForm,
    PersonPasswordForm,
    TokenForm,
)
from accounts.passwords import user_password_change
from accounts.services import AccountError, token_revoke
from campaigns.views import home

PEOPLE = "accounts/people.html"
TOKENS = "accounts/tokens.html"
LOCKED = "registration/locked.html"


# The landing page shows what needs the person (their campaigns, review queues, failures).
dashboard = home


def csrf_failure(request, reason: str = ""):
    return render(request, "accounts/csrf_failure.html", {"reason": reason}, status=403)


def _people_page(request, *, form: PersonForm, status: int):
    everyone = selectors.people_for_user(user=request.user)
    context = {"people": everyone, "form": form, "roles": ROLE_CHOICES}
    return render(request, PEOPLE, context, status=status)


@login_required
def people(request):
    form = PersonForm(request.POST or None)
    if request.method == "POST":
        person = form.save(actor=request.user) if form.is_valid() else None
        if person is not None:
            messages.success(request, f"{person.username} can now sign in.")
            return redirect("people")
    return _people_page(request, form=form, status=400 if form.errors else 200)


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


def _tokens_revoked_note(count: int, *, whose: str, then: str) -> str:
    if not count:
        return ""
    tokens = "API token was" if count == 1 else "API tokens were"
    return f" {whose} {count} {tokens} revoked; {then}."


@login_required
@require_POST
def person_password(request, pk: int):
    """An admin sets someone's password; their API tokens are revoked with it."""
    person = selectors.person_get_for_user(user=request.user, pk=pk)
    form = PersonPasswordForm(request.POST)
    revoked = form.save(person=person, actor=request.user) if form.is_valid() else None
    if revoked is None:  # named beside the field's label, on the page it was sent from
        error = f"{person.username}'s password was not set. New password: {form.first_error()}"
        messages.error(request, error)
        return _people_page(request, form=PersonForm(), status=422)
    note = _tokens_revoked_note(
        revoked, whose="Their", then="they create new ones on the API tokens page"
    )
    messages.success(request, f"{person.username}'s password was set." + note)
    return redirect("people")


class PasswordChangeForm(forms.Form):
    old_password = forms.CharField(
        label="Current password",
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    new_password1 = forms.CharField(
        label="New password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validators_help_text_html(),
    )
    new_password2 = forms.CharField(
        label="New password again",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self):
        data = super().clean()
        if data.get("new_password1") != data.get("new_password2"):
            self.add_error("new_password2", "The two new passwords differ.")
        return data


@login_required
def password_change(request):
    form = PasswordChangeForm(request.POST or None)
    if request.method == "POST" and password_guesses_paused(request, user=request.user):
        return render(request, LOCKED, status=429)
    if request.method == "POST" and form.is_valid():
        try:
            revoked = user_password_change(
                user=request.user,
                old_password=form.cleaned_data["old_password"],
                new_password=form.cleaned_data["new_password1"],
                actor=request.user,
            )
        except AccountError as exc:
            if exc.field == "old_password":
                password_guess_failed(request, user=request.user)  # the fifth: lockout page
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            update_session_auth_hash(request, request.user)
            note = _tokens_revoked_note(
                revoked, whose="Your", then="create new ones on the API tokens page"
            )
            messages.success(request, "Your password was changed." + note)
            return redirect("dashboard")
    status = 422 if form.errors else 200
    return render(request, "registration/password_change.html", {"form": form}, status=status)


@login_required
def tokens(request):
    """One's own API tokens: the list (expiry marked a week ahead) and a new one, whose value
    this answer shows once."""
    form = TokenForm(request.POST or None)
    created = form.save(user=request.user) if request.method == "POST" and form.is_valid() else None
    if created is not None:
        form = TokenForm()
    context = {"tokens": selectors.tokens_for_user(user=request.user), "form": form}
    if created is not None:
        context["created"], context["raw"] = created
    return render(request, TOKENS, context, status=422 if form.errors else 200)


@login_required
@require_POST
def token_revoke_page(request, pk: int):
    token = selectors.token_get_for_user(user=request.user, pk=pk)
    token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token {token.prefix}… is revoked.")
    return redirect("tokens")
