"""Model access for a run's agent variants: the gateway's name in their sandboxes' egress
allowlist, a grant per variant (its token in the transform's environment), its revocation when the
sandbox ends, and how a variant that ran out of budget or reached no provider ends."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from string import Template

from agents.gateway import GATEWAY_RULE, GATEWAY_URL, model_gateway
from agents.grants import grant_mint, grants_revoke
from agents.models import Exhausted
from agents.selectors import campaign_model_spend, variant_grant_latest
from agents.spec import model_budgets, model_for_variant
from campaigns.models import RepoRun, Validation, Variant, VariantState
from campaigns.states import RunFailed
from core.errors import ConvoyError
from sandboxes.backends.base import Capability, NetworkPolicy, SandboxError, SandboxSpec
from sandboxes.egress.sandbox import allowed_domains
from sandboxes.repos import RepoUrlError, git, mirror_fetch


def run_models_prepare(*, ctx) -> SandboxSpec:
    """The run's sandbox spec (`ctx` is the pipeline's run context) with a way to the gateway
    when a variant uses a model. Refuses (RunFailed) when the campaign's model budget is
    spent: no new run starts then."""
    run, spec, sandbox_spec, backend = ctx.run, ctx.spec, ctx.sandbox_spec, ctx.backend
    if not any(model_for_variant(spec, v) for v in spec["variants"]):
        return sandbox_spec
    # The spec's campaign budget, or its provider's ceiling (also one lowered since launch).
    budgets = model_budgets(spec)
    if budgets is not None:
        budget = budgets["campaign_budget_usd"]
        spent = campaign_model_spend(campaign_id=run.campaign_id)["cost_usd"]
        if spent >= budget:
            raise RunFailed(
                f"budget exhausted: the campaign's model budget (${budget:f}) is spent "
                f"(${spent:.4f}); no new runs start"
            )
    if Capability.EGRESS_PROXY not in backend.capabilities:
        raise RunFailed(
            f"the {backend.name} backend cannot reach Convoy's model gateway; "
            "use bwrap or gvisor for agent variants"
        )
    model_gateway()
    # Each sandbox's own egress socket (sandboxes.services opens it) also allows the gateway.
    domains = (*sandbox_spec.allowed_domains, *allowed_domains([GATEWAY_RULE]))
    return dataclasses.replace(
        sandbox_spec, network=NetworkPolicy.ALLOWLIST, allowed_domains=tuple(dict.fromkeys(domains))
    )


PROMPT_FILES = ("prompt.md", "prompt.txt")
BASELINE_CHARS = 20_000
_LANGUAGES = {
    ".py": "Python", ".js": "JavaScript", ".jsx": "JavaScript", ".ts": "TypeScript",
    ".tsx": "TypeScript", ".go": "Go", ".rs": "Rust", ".java": "Java", ".kt": "Kotlin",
    ".rb": "Ruby", ".php": "PHP", ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++",
    ".cs": "C#", ".swift": "Swift", ".scala": "Scala",
}  # fmt: skip


def _language(run) -> str:
    """The repository's main language, by its files' extensions at the run's commit."""
    started = run.started_at.timestamp() if run.started_at else None
    try:
        # A local repository's checkout is cloned straight from it: its mirror may not exist.
        mirror = mirror_fetch(url=run.repository.url, fresh_after=started)
        names = git(
            "-C", str(mirror), "ls-tree", "-r", "--name-only", run.base_commit or run.ref,
        ).splitlines()  # fmt: skip
    except (SandboxError, RepoUrlError):
        return "unknown"
    counts = Counter(_LANGUAGES.get(Path(n).suffix.lower()) for n in names)
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else "unknown"


def variant_prompt_env(*, ctx, spec_variant: dict) -> dict:
    """$PROMPT from the spec's `files: {prompt.md: …}`, rendered for this repository:
    ${repo}, ${branch}, ${default_branch}, ${language}, ${variant} and ${baseline_output} (the
    untouched repository's failing validation output, empty when it passed), secrets masked."""
    name = next((n for n in PROMPT_FILES if n in ctx.spec["files"]), None)
    if name is None or "PROMPT" in spec_variant["env"]:
        return {}
    run = ctx.run
    baseline = RepoRun.objects.filter(pk=run.pk).values("baseline", "baseline_error").first()
    failing = baseline and baseline["baseline"] == Validation.FAILED
    text = Template(ctx.spec["files"][name]).safe_substitute(
        repo=run.repository.name,
        branch=run.ref,
        default_branch=run.repository.default_ref,
        language=_language(run),
        variant=spec_variant["name"],
        baseline_output=baseline["baseline_error"][-BASELINE_CHARS:] if failing else "",
    )
    return {"PROMPT": ctx.redact(text)}


def variant_model_env(*, ctx, spec_variant: dict, pk: int) -> dict:
    """Mint the grant of variant `pk`; the environment that points its agent at the gateway
    (and its rendered $PROMPT). The run's secret values are masked in its transcripts."""
    run, spec, variant_id = ctx.run, ctx.spec, pk
    prompt = variant_prompt_env(ctx=ctx, spec_variant=spec_variant)
    model = model_for_variant(spec, spec_variant)
    if not model:
        return prompt
    sandbox_id = Variant.objects.filter(pk=pk).values_list("sandbox_id", flat=True).first()
    try:
        grant, token = grant_mint(
            campaign_id=run.campaign_id,
            run_id=run.pk,
            variant_id=variant_id,
            sandbox_id=sandbox_id,
            provider_name=model["provider"],
            model=model["name"],
            budget_usd=model.get("budget_usd"),
            max_calls=model.get("max_calls"),
            campaign_budget_usd=model.get("campaign_budget_usd"),
            ttl_s=int(spec["limits"]["timeout_s"]) * 4 + 600,
            masks=tuple(ctx.secrets.values()),
        )
    except ConvoyError as exc:
        raise RunFailed(f"model: {exc.message}") from None
    return {
        **prompt,
        "OPENAI_BASE_URL": f"{GATEWAY_URL}/v1",
        "OPENAI_API_BASE": f"{GATEWAY_URL}/v1",  # older clients (litellm, aider)
        "OPENAI_API_KEY": token,
        "ANTHROPIC_BASE_URL": GATEWAY_URL,
        "ANTHROPIC_API_KEY": token,
        "CONVOY_MODEL": model["name"],
        "CONVOY_MODEL_PROVIDER": model["provider"],
        **_agent_env(style=grant.provider.api_style, name=model["name"]),
    }


def _agent_env(*, style: str, name: str) -> dict:
    """What the documented agents read besides the base URLs and keys (README "Agents")."""
    routed = f"{'anthropic' if style == 'anthropic' else 'openai'}/{name}"  # litellm's form
    env = {
        "MSWEA_MODEL_NAME": routed,  # mini-swe-agent
        "MSWEA_CONFIGURED": "true",  # no first-run setup prompt
        "MSWEA_COST_TRACKING": "ignore_errors",  # Convoy counts the cost
        "AIDER_MODEL": routed,  # aider
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm: no fetch of its price list
    }
    if style == "anthropic":
        env["ANTHROPIC_MODEL"] = name  # Claude Code
    return env


def variant_model_finish(*, variant_id: int, result: dict) -> dict:
    """Revoke the variant's token (its sandbox ended) and say why it ended when the model was
    the reason: its budget ran out, or its provider could not be reached."""
    grants_revoke(variant_id=variant_id)
    grant = variant_grant_latest(variant_id=variant_id)
    if grant is None or not result:
        return result
    if grant.exhausted:
        why = {
            Exhausted.CALLS: f"max_calls {grant.max_calls} made",
            Exhausted.BUDGET: f"budget_usd {grant.budget_usd} spent (${grant.spent_usd:.6f})",
            Exhausted.CAMPAIGN: "the campaign's model budget is spent",
        }.get(grant.exhausted, grant.exhausted)
        error = f"budget exhausted: {why}; {grant.calls} model call(s)"
        if result.get("error"):
            error += f"\n{result['error']}"
        return {**result, "state": VariantState.FAILED, "error": error}
    if grant.last_error and result.get("state") == VariantState.FAILED:
        return {**result, "error": f"{grant.last_error}\n{result.get('error', '')}".rstrip()}
    return result


def run_models_close(*, run_id: int) -> None:
    """The run ended: every grant of its variants is revoked (also those of variants that a
    crash or a cancel stopped before their own end)."""
    grants_revoke(run_id=run_id)
