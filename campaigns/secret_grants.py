"""Which campaigns may receive which secrets: admins grant and revoke, every use is audited,
and diffs that contain a secret are held back until an admin overrides the finding.

A secret reaches a sandbox only through `secret_values_for_run` (or, for engines and image
builders that need a credential outside a sandbox, `secret_value_for_campaign`), and both
refuse a secret not granted to the campaign: granted to it directly, or to its owner (a
manager) for all of their campaigns.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.record import audit_record
from campaigns.models import Campaign, Secret, SecretGrant, SecretLeak, Variant
from campaigns.secrets import secret_decrypt, secret_values_open, secret_values_seal
from campaigns.selectors import secret_manage_check
from campaigns.states import RunFailed
from core.errors import Conflict, Invalid, NotFound, PermissionDenied
from core.patches import patch_binary_texts
from core.secret_forms import SecretScanner


def _grants_q(*, campaign_id: int | None, owner_id: int | None) -> Q:
    q = Q(pk__in=[])
    if campaign_id is not None:
        q |= Q(campaign_id=campaign_id)
    if owner_id is not None:
        q |= Q(manager_id=owner_id)
    return q


def secret_names_granted(*, campaign_id: int | None, owner_id: int | None) -> set[str]:
    """Names of the secrets granted to the campaign, or to its owner for all their campaigns."""
    grants = SecretGrant.objects.filter(_grants_q(campaign_id=campaign_id, owner_id=owner_id))
    return set(grants.values_list("secret__name", flat=True))


def secret_grant(
    *, name: str, actor, campaign: Campaign | None = None, manager: User | None = None
) -> SecretGrant:
    """Let `campaign`'s sandboxes (or those of every campaign `manager` owns) receive a secret."""
    secret_manage_check(user=actor)
    if (campaign is None) == (manager is None):
        raise Invalid("grant a secret to one campaign or to one manager", field="grantee")
    secret = Secret.objects.filter(name=name).first()
    if secret is None:
        raise Invalid(f"no stored secret named {name!r}", field="name")
    with transaction.atomic():
        grant, created = SecretGrant.objects.get_or_create(
            secret=secret, campaign=campaign, manager=manager, defaults={"granted_by": actor}
        )
        if created:
            audit_record(
                action="secret.grant.created",
                actor=actor,
                target=grant,
                context={"campaign_id": campaign.pk if campaign else None},
                payload={
                    "name": name,
                    "campaign": campaign.name if campaign else None,
                    "manager": manager.username if manager else None,
                },
            )
    return grant


def secret_revoke(*, grant_id: int, actor) -> None:
    """Withdraw a grant; runs that start later no longer receive the secret."""
    secret_manage_check(user=actor)
    with transaction.atomic():
        grant = (
            SecretGrant.objects.select_for_update(of=("self",))
            .select_related("secret", "campaign", "manager")
            .filter(pk=grant_id)
            .first()
        )
        if grant is None:
            raise NotFound("No such grant.")
        audit_record(
            action="secret.grant.revoked",
            actor=actor,
            target=grant,
            context={"campaign_id": grant.campaign_id},
            payload={
                "name": grant.secret.name,
                "campaign": grant.campaign.name if grant.campaign else None,
                "manager": grant.manager.username if grant.manager else None,
            },
        )
        grant.delete()


def secret_grants_for_user(*, user) -> QuerySet[SecretGrant]:
    """Every grant, for the secrets page; 403 unless the user manages secrets."""
    secret_manage_check(user=user)
    return SecretGrant.objects.select_related("secret", "campaign", "manager", "granted_by")


def secret_values_for_run(*, campaign: Campaign, names: Iterable[str], run_id: int) -> dict:
    """Decrypt the named secrets for one run's sandboxes; RunFailed (the run fails, with this
    message) when one is not stored or no longer granted. The use is audited per run."""
    names = list(names)
    if not names:
        return {}
    granted = secret_names_granted(campaign_id=campaign.pk, owner_id=campaign.owner_id)
    refused = [n for n in names if n not in granted]
    if refused:
        raise RunFailed(f"secret(s) not granted to this campaign: {', '.join(refused)}")
    values = secret_decrypt(names=names)
    with transaction.atomic():
        audit_record(
            action="secret.secret.used",
            actor_type="system",
            context={"campaign_id": campaign.pk, "run_id": run_id},
            payload={"names": names},
        )
    return values


def secret_value_for_campaign(*, campaign_id: int, name: str) -> str:
    """One granted secret's value for code that needs a credential on the campaign's behalf
    outside a sandbox (a cloud engine, an image registry). PermissionDenied when not granted;
    the use is audited."""
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        raise NotFound("No such campaign.")
    if name not in secret_names_granted(campaign_id=campaign.pk, owner_id=campaign.owner_id):
        raise PermissionDenied(
            f"The secret {name!r} is not granted to campaign {campaign.name}.",
            capability="secret_use",
        )
    (value,) = secret_decrypt(names=[name]).values()
    with transaction.atomic():
        audit_record(
            action="secret.secret.used",
            actor_type="system",
            context={"campaign_id": campaign.pk},
            payload={"names": [name]},
        )
    return value


# --- secrets in diffs --------------------------------------------------------------------------


# Stored patches were read within limits.max_diff_mb (at most 100 MB) when they were captured.
SCAN_INFLATE_CAP = 128 * 1024 * 1024


def variant_secret_scan(
    *, variant_id: int, campaign_id: int, patch: bytes, names: list[str] | None = None
) -> SecretLeak | None:
    """Look for the campaign's secrets (every form) in a variant's new diff; record a leak.
    Called in the transaction that stores the diff. `names`: the spec's `secrets:` when the
    caller has the spec (else it is read)."""
    if names is None:
        spec = Campaign.objects.filter(pk=campaign_id).values_list("spec", flat=True).first()
        names = (spec or {}).get("secrets") or []
    if not names:
        return None
    values = secret_decrypt(names=names, missing_ok=True)
    scanner = SecretScanner(values)
    # Binary hunks are read decoded too: a repository's `.gitattributes` (or a forged patch)
    # can send a source file as a base85 hunk that publishing applies all the same.
    texts = [bytes(patch).decode("utf-8", "replace")]
    texts += patch_binary_texts(bytes(patch), inflate_cap=SCAN_INFLATE_CAP)
    hits = scanner.find("\n".join(texts))
    SecretLeak.objects.filter(variant_id=variant_id).delete()  # a rerun's diff replaces it
    if not hits:
        return None
    leak = SecretLeak.objects.create(
        variant_id=variant_id,
        names=sorted(hits),
        forms=sorted({kind for kinds in hits.values() for kind in kinds}),
        # Masked with the values found, not the secrets' current ones: a rotation unmasked it.
        values_ciphertext=secret_values_seal({n: values[n] for n in sorted(hits) if n in values}),
    )
    audit_record(
        action="secret.leak.found",
        actor_type="system",
        target=leak,
        context={"campaign_id": campaign_id, "variant_id": variant_id},
        payload={"names": leak.names, "forms": leak.forms},
    )
    return leak


def variant_secret_check(*, variant_id: int) -> None:
    """409 when the variant's diff contains a secret and no admin has overridden the finding:
    approving and publishing call this."""
    leak = SecretLeak.objects.filter(variant_id=variant_id, overridden_at__isnull=True).first()
    if leak is not None:
        raise Conflict(
            f"The change contains the value of secret(s) {', '.join(leak.names)} "
            f"({', '.join(leak.forms)}); it cannot be approved or published unless an admin "
            "overrides the finding.",
            code="secret_in_diff",
        )


def variant_secret_override(*, variant: Variant, actor, reason: str) -> SecretLeak:
    """An admin's explicit decision that a flagged diff may be approved and published."""
    secret_manage_check(user=actor)
    if not (reason or "").strip():
        raise Invalid("say why the secret may be published", field="reason")
    with transaction.atomic():
        leak = SecretLeak.objects.select_for_update().filter(variant=variant).first()
        if leak is None:
            raise NotFound("This change contains no secret.")
        if leak.overridden_at is None:
            leak.overridden_by, leak.overridden_at = actor, timezone.now()
            leak.override_reason = reason.strip()
            leak.save(update_fields=["overridden_by", "overridden_at", "override_reason"])
            audit_record(
                action="secret.leak.overridden",
                actor=actor,
                target=leak,
                context={"variant_id": variant.pk},
                payload={"names": leak.names, "forms": leak.forms},
                reason=leak.override_reason,
            )
    return leak


def _leak_mask(leak: SecretLeak) -> SecretScanner:
    """The masking of a flagged diff: the values its scan found (kept with the finding, so a
    rotated or deleted secret stays masked), or for a finding older than that, the current
    values of the secrets it names."""
    if leak.values_ciphertext:
        return SecretScanner(secret_values_open(leak.values_ciphertext))
    return SecretScanner(secret_decrypt(names=leak.names, missing_ok=True))


def variant_diff_masked(*, variant: Variant, text: str) -> str:
    """`text` (the variant's diff, or part of it) with the campaign's secrets masked, for
    display; unchanged when the diff was not flagged."""
    leak = SecretLeak.objects.filter(variant_id=variant.pk).first()
    if leak is None:
        return text
    return _leak_mask(leak).mask(text)


def variant_secret_on_diff_stored(
    sender, *, variant_id: int, campaign_id: int, patch: bytes, secret_names=None, **kwargs
) -> None:
    """`campaigns.signals.variant_diff_stored` receiver: scan each new diff for secrets."""
    variant_secret_scan(
        variant_id=variant_id, campaign_id=campaign_id, patch=patch, names=secret_names
    )


def variant_patch_for_display(*, variant: Variant) -> bytes:
    """The variant's patch as pages show it: with the campaign's secrets masked when the diff
    was flagged (the stored patch is what an overridden publish pushes)."""
    patch = bytes(variant.patch)
    if not SecretLeak.objects.filter(variant_id=variant.pk).exists():
        return patch
    text = variant_diff_masked(variant=variant, text=patch.decode("utf-8", "replace"))
    return text.encode()


def variant_display_mask(*, variant: Variant):
    """The masking pages apply to text decoded out of the variant's patch (binary hunks carry
    it base85-encoded, past `variant_patch_for_display`), or None when it was not flagged."""
    leak = SecretLeak.objects.filter(variant_id=variant.pk).first()
    if leak is None:
        return None
    return _leak_mask(leak).mask


def variant_diffs_for_display(*, variants: Iterable[Variant]) -> dict[int, str]:
    """{variant id: its diff as text} as the run page, the preview, the API and reports show
    it: with the campaign's secrets masked where the diff was flagged (one query for all).
    `Variant.diff` is the stored text, unmasked: for the pipeline and publishing only."""
    variants = list(variants)
    leaks = {
        leak.variant_id: leak
        for leak in SecretLeak.objects.filter(variant_id__in=[v.pk for v in variants])
    }
    shown = {}
    for variant in variants:
        text = bytes(variant.patch).decode("utf-8", "replace")
        leak = leaks.get(variant.pk)
        if leak is not None:
            text = _leak_mask(leak).mask(text)
        shown[variant.pk] = text
    return shown


def secret_leaks_open() -> QuerySet[SecretLeak]:
    """Flagged diffs no admin has overridden, newest first, for the secrets page."""
    return (
        SecretLeak.objects.filter(overridden_at__isnull=True)
        .select_related("variant", "variant__run", "variant__run__campaign")
        .order_by("-found_at")
    )
