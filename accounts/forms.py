"""Forms for people: a new user, a role or activity change, a password an admin sets, one's own
API token. Saving calls
the service; a refusal about one of the form's fields is shown beside it (the one place such
refusals are caught)."""

from django import forms
from django.contrib.auth.models import User

from accounts.models import ApiToken
from accounts.passwords import user_password_set
from accounts.roles import ROLES
from accounts.services import (
    token_create,
    token_days_allowed,
    user_active_set,
    user_create,
    user_role_set,
)
from core.errors import Invalid

ROLE_CHOICES = [(r, r) for r in ROLES]


class _ServiceForm(forms.Form):
    def _call(self, service, **kwargs):
        """The service's result, or None with its refusal added to the form."""
        try:
            return service(**kwargs)
        except Invalid as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
            return None

    def first_error(self) -> str:
        return next((message for errors in self.errors.values() for message in errors), "")


class PersonForm(_ServiceForm):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    role = forms.ChoiceField(choices=ROLE_CHOICES)
    password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        min_length=8,
        help_text="At least 8 characters; hand it to the person over a safe channel.",
    )

    def save(self, *, actor: User) -> User | None:
        return self._call(user_create, **self.cleaned_data, actor=actor)


class PersonChangeForm(_ServiceForm):
    """One change per post: `active` (1 or 0) when given, else `role`."""

    role = forms.ChoiceField(choices=ROLE_CHOICES, required=False)
    active = forms.ChoiceField(choices=[("1", "active"), ("0", "inactive")], required=False)

    def clean(self):
        data = super().clean()
        if not data.get("active") and not data.get("role") and "role" not in self.errors:
            self.add_error("role", "This field is required.")
        return data

    def save(self, *, person: User, actor: User) -> User | None:
        if self.cleaned_data["active"]:
            active = self.cleaned_data["active"] == "1"
            return self._call(user_active_set, user=person, active=active, actor=actor)
        return self._call(user_role_set, user=person, role=self.cleaned_data["role"], actor=actor)


class PersonPasswordForm(_ServiceForm):
    """An admin sets someone's password; the service revokes their API tokens with it."""

    password = forms.CharField(
        label="New password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Hand it to the person over a safe channel; their API tokens are revoked.",
    )

    def save(self, *, person: User, actor: User) -> int | None:
        new_password = self.cleaned_data["password"]
        return self._call(user_password_set, user=person, new_password=new_password, actor=actor)


class TokenForm(_ServiceForm):
    """A new API token for oneself; the lifetime's bounds are the service's (named beside
    `days`), so CONVOY_API_TOKEN_MAX_DAYS is enforced in one place."""

    name = forms.CharField(max_length=100, required=False, help_text="To tell tokens apart.")
    days = forms.IntegerField(
        label="Lifetime (days)", help_text="After this the token is refused; make a new one."
    )
    scope = forms.ChoiceField(
        choices=ApiToken.Scope.choices,
        initial=ApiToken.Scope.READ,
        widget=forms.RadioSelect,
        help_text="Read is enough for scripts that only look.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        default, most = token_days_allowed()
        self.fields["days"].initial = default
        self.fields["days"].help_text += f" At most {most}."
        self.fields["days"].widget.attrs.update(min=1, max=most)

    def save(self, *, user: User) -> tuple[ApiToken, str] | None:
        return self._call(token_create, user=user, actor=user, **self.cleaned_data)
