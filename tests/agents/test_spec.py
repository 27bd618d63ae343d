"""The spec's `model:`: campaign level, a variant's override, and refusals naming the field."""

import pytest

from agents.providers import provider_set
from campaigns.spec import CampaignSpecError, spec_parse

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db]

BASE = """\
name: agents
repos: {tag: anything}
transform: {run: "true"}
"""


@pytest.fixture
def provider(admin_user):
    return provider_set(
        name="openai-main",
        api_style="openai",
        base_url="https://models.example/v1",
        key="sk-spec-test",
        actor=admin_user,
    )


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(CampaignSpecError) as info:
        spec_parse(text)
    return {e["path"]: e["message"] for e in info.value.as_list()}


def test_campaign_model_and_a_variant_override(provider):
    spec = spec_parse(
        BASE
        + "model: {provider: openai-main, name: gpt-5-codex, budget_usd: 2, max_calls: 400}\n"
        + "variants:\n  - {name: a}\n  - {name: b, model: {name: gpt-5-mini, max_calls: 1}}\n"
    ).data
    assert spec["model"] == {
        "provider": "openai-main",
        "name": "gpt-5-codex",
        "budget_usd": 2.0,
        "max_calls": 400,
    }
    assert spec["variants"][1]["model"] == {"name": "gpt-5-mini", "max_calls": 1}


def test_refusals_name_the_field(provider):
    errors = _errors(
        BASE + "model: {provider: nobody, name: x, budget_usd: -1, max_calls: 0, colour: red}\n"
    )
    assert "no model provider named 'nobody'" in errors["model.provider"]
    assert "above 0" in errors["model.budget_usd"]
    assert "from 1" in errors["model.max_calls"]
    assert "unknown key" in errors["model.colour"]
    errors = _errors(BASE + "variants:\n  - {name: a, model: {provider: openai-main}}\n")
    assert errors["variants[0].model.name"] == "is required"
