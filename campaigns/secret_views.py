"""Secrets pages: store or rotate a secret, grant it to a campaign or a manager, revoke a
grant, and override a diff flagged for containing a secret. Admins only (secret_manage)."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import MANAGER
from campaigns import selectors
from campaigns.forms import SecretForm
from campaigns.models import Campaign, Secret, Variant
from campaigns.secret_grants import (
    secret_grant,
    secret_grants_for_user,
    secret_leaks_open,
    secret_revoke,
    variant_secret_override,
)
from campaigns.secrets import secret_set

SECRETS = "campaigns/secrets.html"


class GrantForm(forms.Form):
    name = forms.ModelChoiceField(
        queryset=Secret.objects.all(), to_field_name="name", label="Secret"
    )
    campaign = forms.ModelChoiceField(
        queryset=Campaign.objects.all(), required=False, help_text="One campaign, or…"
    )
    manager = forms.ModelChoiceField(
        queryset=User.objects.filter(groups__name=MANAGER).order_by("username"),
        to_field_name="username",
        required=False,
        help_text="…every campaign this manager owns",
    )


class OverrideForm(forms.Form):
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


def _page(request, *, form=None, grant_form=None, status=200):
    context = {
        "secrets": selectors.secrets_for_user(user=request.user),
        "grants": secret_grants_for_user(user=request.user),
        "leaks": secret_leaks_open(),
        "form": form or SecretForm(),
        "grant_form": grant_form or GrantForm(),
        "override_form": OverrideForm(),
    }
    return render(request, SECRETS, context, status=status)


@login_required
def secret_list(request):
    selectors.secret_manage_check(user=request.user)
    form = SecretForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        secret_set(**form.cleaned_data, actor=request.user)
        messages.success(request, f"Secret {form.cleaned_data['name']} saved.")
        return redirect("secret-list")
    return _page(request, form=form, status=422 if form.errors else 200)


@login_required
@require_POST
def secret_grant_create(request):
    selectors.secret_manage_check(user=request.user)
    form = GrantForm(request.POST)
    if not form.is_valid():
        return _page(request, grant_form=form, status=422)
    data = form.cleaned_data
    secret_grant(
        name=data["name"].name,
        campaign=data["campaign"],
        manager=data["manager"],
        actor=request.user,
    )
    messages.success(request, f"Secret {data['name'].name} granted.")
    return redirect("secret-list")


@login_required
@require_POST
def secret_grant_revoke(request, grant_id: int):
    secret_revoke(grant_id=grant_id, actor=request.user)
    messages.success(request, "Grant revoked.")
    return redirect("secret-list")


@login_required
@require_POST
def secret_leak_override(request, variant_id: int):
    selectors.secret_manage_check(user=request.user)
    variant = get_object_or_404(Variant, pk=variant_id)
    form = OverrideForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    variant_secret_override(variant=variant, actor=request.user, reason=reason)
    messages.success(request, "The change may now be approved and published.")
    return redirect("secret-list")
