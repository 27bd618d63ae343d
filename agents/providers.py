"""Model providers: admins add, change and remove them (audited); the key is encrypted at rest
with the secrets key and decrypted only by the gateway, on the host."""

from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from django.db import transaction

from accounts.roles import capability_require
from agents.models import DEFAULT_MAX_CAMPAIGN_BUDGET_USD, ApiStyle, ModelProvider
from agents.prices import price_lookup
from audit.record import audit_record
from core.crypto import secrets_fernet
from core.errors import Conflict, Invalid, NotFound

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
# The key goes into a request header: printable ASCII only (no CR/LF, NUL or lone surrogates).
KEY_RE = re.compile(r"[\x21-\x7e]+\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# The calls a token may make, per API style: POST to the inference endpoints (paths after the
# base URL, which holds /v1). Anything else with the provider's key (GET stored completions,
# files, batches that run other models, DELETE) would reach other campaigns' data or spend
# outside the budget.
ENDPOINTS = {
    ApiStyle.OPENAI: frozenset({"/chat/completions", "/responses"}),
    ApiStyle.ANTHROPIC: frozenset({"/messages", "/messages/count_tokens"}),
}
# Answers without usage that cost nothing (no usage is estimated for them).
FREE_ENDPOINTS = frozenset({"/messages/count_tokens"})
CAPABILITY = "secret_manage"  # providers hold keys: the same people who manage secrets


def _price(value, field: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise Invalid("must be a number of USD per million tokens", field=field) from None
    if not price.is_finite() or price < 0 or price > 100_000:
        raise Invalid("must be between 0 and 100000 USD per million tokens", field=field)
    return price


MAX_CEILING_USD = Decimal(1_000_000)  # the largest budget a spec may name


class _Keep:
    """`max_run_budget_usd` not given: the stored ceiling stays (None removes it)."""


KEEP = _Keep()


def _ceiling(value, field: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise Invalid("must be an amount in USD, e.g. 50", field=field) from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_CEILING_USD:
        raise Invalid("must be an amount in USD above 0 and at most 1000000", field=field)
    if amount != amount.quantize(Decimal("0.01")):
        raise Invalid("must be in whole cents, e.g. 12.50", field=field)
    return amount.quantize(Decimal("0.01"))


def provider_budgets(
    provider: ModelProvider, *, budget_usd=None, campaign_budget_usd=None
) -> tuple[Decimal | None, Decimal]:
    """(budget_usd, campaign_budget_usd) a grant of this provider gets: the spec's values, the
    provider's ceilings where the spec named none, and never more than the ceilings (one
    lowered after the spec was checked applies to the sandboxes started since)."""
    campaign = provider.max_campaign_budget_usd
    if campaign_budget_usd is not None:
        campaign = min(Decimal(str(campaign_budget_usd)), campaign)
    run = provider.max_run_budget_usd
    if budget_usd is not None:
        run = Decimal(str(budget_usd)) if run is None else min(Decimal(str(budget_usd)), run)
    return run, campaign


def _base_url_check(base_url: str):
    """The split base URL; Invalid(field="base_url") for anything but an http(s) URL with a
    host and, if given, a port from 1 to 65535 (urlsplit and .port raise on some inputs)."""
    if not isinstance(base_url, str) or _CONTROL.search(base_url):
        raise Invalid("control characters are not allowed", field="base_url")
    try:
        url = urlsplit(base_url)
        port = url.port
    except ValueError:
        url, port = None, 0
    if url is None or url.scheme not in ("http", "https") or not url.hostname or port == 0:
        raise Invalid(
            "an http(s) URL with a host and a port from 1 to 65535, "
            "such as https://api.openai.com/v1",
            field="base_url",
        )
    if url.username is not None or url.password is not None:
        # The gateway refuses to send the key to a URL with a user name (a request path could
        # otherwise move it to another host): such a provider would fail every call.
        raise Invalid(
            "a user name or password in the URL is not allowed (the key is sent in a header)",
            field="base_url",
        )
    return url


def _models_check(allowed_models) -> list[str]:
    models = []
    for i, m in enumerate(allowed_models or []):
        if not isinstance(m, str) or _CONTROL.search(m):
            raise Invalid(
                "model names are text without control characters", field=f"allowed_models[{i}]"
            )
        if len(m.strip()) > 200:
            raise Invalid("a model name is at most 200 characters", field=f"allowed_models[{i}]")
        if m.strip():
            models.append(m.strip())
    return models


def _address(url) -> tuple:
    try:
        return (url.scheme, url.hostname, url.port)
    except ValueError:  # a port stored before ports were checked: never the same host
        return (url.scheme, url.hostname, None, "bad port")


def provider_set(
    *,
    name: str,
    api_style: str,
    base_url: str,
    key: str | None,
    allowed_models: list[str] | None = None,
    input_usd_per_mtok=None,
    output_usd_per_mtok=None,
    max_campaign_budget_usd=None,
    max_run_budget_usd=KEEP,
    actor,
) -> ModelProvider:
    """Add a provider or change one. Prices left empty are taken from the price table for the
    first allowed model when it knows it (else 0). `key=None` keeps the stored key.
    `max_campaign_budget_usd=None` keeps the stored ceiling (a new provider gets
    DEFAULT_MAX_CAMPAIGN_BUDGET_USD); `max_run_budget_usd=None` removes that ceiling, KEEP
    (not given) keeps it."""
    capability_require(user=actor, capability=CAPABILITY)
    if not NAME_RE.match(name or "") or name.startswith("removed-"):
        raise Invalid("use lowercase letters, digits and '-'", field="name")
    if api_style not in ApiStyle.values:
        raise Invalid(f"must be one of {', '.join(ApiStyle.values)}", field="api_style")
    url = _base_url_check(base_url)
    models = _models_check(allowed_models)
    if key is not None and key != "" and not KEY_RE.match(key):
        raise Invalid("an API key is printable ASCII without spaces", field="key")
    prices = [
        _price(input_usd_per_mtok, "input_usd_per_mtok"),
        _price(output_usd_per_mtok, "output_usd_per_mtok"),
    ]
    campaign_ceiling = _ceiling(max_campaign_budget_usd, "max_campaign_budget_usd")
    keep_run = isinstance(max_run_budget_usd, _Keep)
    run_ceiling = None if keep_run else _ceiling(max_run_budget_usd, "max_run_budget_usd")
    if None in prices and models:
        known = price_lookup(api_style=api_style, model=models[0])
        if known:
            prices = [p if p is not None else k for p, k in zip(prices, known, strict=True)]
    with transaction.atomic():
        provider = ModelProvider.objects.select_for_update().filter(name=name).first()
        fields = {
            "api_style": api_style,
            "base_url": base_url.rstrip("/"),
            "allowed_models": models,
        }
        if provider is None:
            if not key:
                raise Invalid("the provider's API key is required", field="key")
            provider = ModelProvider(name=name, created_by=actor)
            action, changes = "agents.provider.created", {}
        else:
            action = "agents.provider.updated"
            changes = {
                k: [getattr(provider, k), v] for k, v in fields.items() if getattr(provider, k) != v
            }
            moved = _address(urlsplit(provider.base_url)) != _address(url)
            if moved and not key:  # the stored key would go to the new host
                raise Invalid(
                    "give the key again: the stored one is not sent to a new host", field="key"
                )
        for k, v in fields.items():
            setattr(provider, k, v)
        for attr, price in zip(("input_usd_per_mtok", "output_usd_per_mtok"), prices, strict=True):
            if price is not None:
                if provider.pk and getattr(provider, attr) != price:
                    changes[attr] = [str(getattr(provider, attr)), str(price)]
                setattr(provider, attr, price)
        ceilings = {}
        if campaign_ceiling is not None or provider.pk is None:
            default = DEFAULT_MAX_CAMPAIGN_BUDGET_USD
            ceilings["max_campaign_budget_usd"] = campaign_ceiling or default
        if not keep_run:
            ceilings["max_run_budget_usd"] = run_ceiling
        for attr, ceiling in ceilings.items():
            old = getattr(provider, attr)
            if provider.pk and old != ceiling:
                changes[attr] = [_usd(old), _usd(ceiling)]
            setattr(provider, attr, ceiling)
        if key:
            provider.key_ciphertext = secrets_fernet().encrypt(key.encode())
            if action == "agents.provider.updated":
                changes["key"] = ["[stored]", "[rotated]"]
        provider.save()
        audit_record(
            action=action,
            actor=actor,
            target=provider,
            changes=changes or None,
            payload={
                "name": name,
                "api_style": api_style,
                "base_url": provider.base_url,
                "allowed_models": models,
                "input_usd_per_mtok": str(provider.input_usd_per_mtok),
                "output_usd_per_mtok": str(provider.output_usd_per_mtok),
                "max_campaign_budget_usd": _usd(provider.max_campaign_budget_usd),
                "max_run_budget_usd": _usd(provider.max_run_budget_usd),
            },
        )
    _keys_forget()
    return provider


def _usd(value) -> str | None:
    return None if value is None else str(Decimal(value).quantize(Decimal("0.01")))


def provider_remove(*, name: str, actor) -> None:
    capability_require(user=actor, capability=CAPABILITY)
    with transaction.atomic():
        provider = ModelProvider.objects.select_for_update().filter(name=name).first()
        if provider is None:
            raise NotFound(f"no model provider named {name!r}")
        if provider.grants.filter(revoked_at=None).exists():
            raise Conflict(f"provider {name!r} is in use by a running variant; try again later")
        audit_record(
            action="agents.provider.removed", actor=actor, target=provider, payload={"name": name}
        )
        if provider.grants.exists():  # grants and calls keep their history
            _retire(provider)
        else:
            provider.delete()
    _keys_forget()


def _retire(provider: ModelProvider) -> None:
    """A provider with past grants keeps its row (calls and grants name it) but loses its key
    and its name, so the name can be reused."""
    provider.name = f"removed-{provider.pk}-{provider.name}"[:100]
    provider.key_ciphertext = b""
    provider.save(update_fields=["name", "key_ciphertext", "updated_at"])


def providers_for_user(*, user) -> list[ModelProvider]:
    capability_require(user=user, capability=CAPABILITY)
    return list(ModelProvider.objects.exclude(name__startswith="removed-"))


def provider_get(*, name: str) -> ModelProvider:
    provider = ModelProvider.objects.filter(name=name).first()
    if provider is None or name.startswith("removed-"):
        raise NotFound(f"no model provider named {name!r}")
    return provider


# --- the decrypted key, for the gateway only -------------------------------------------------

_keys: dict[tuple[int, bytes], str] = {}
_keys_lock = threading.Lock()


def provider_key(provider: ModelProvider) -> str:
    """The provider's real key, decrypted once per stored value; never for display."""
    cache_key = (provider.pk, bytes(provider.key_ciphertext))
    with _keys_lock:
        value = _keys.get(cache_key)
    if value is None:
        value = secrets_fernet().decrypt(bytes(provider.key_ciphertext)).decode()
        with _keys_lock:
            _keys[cache_key] = value
    return value


def _keys_forget() -> None:
    with _keys_lock:
        _keys.clear()
