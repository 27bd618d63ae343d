"""Forms for people: a new user, a role."""

from django import forms

from accounts.roles import ROLES

ROLE_CHOICES = [(r, r) for r in ROLES]


class PersonForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    role = forms.ChoiceField(choices=ROLE_CHOICES)
    password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        min_length=8,
        help_text="At least 8 characters; hand it to the person over a safe channel.",
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)
