"""The campaign spec's `network:` field: what it accepts, what it refuses and how it says so."""

import pytest

from campaigns.spec import CampaignSpecError, spec_parse
from sandboxes.backends.base import NetworkPolicy
from sandboxes.egress.sandbox import spec_network_fields

pytestmark = pytest.mark.shapes("embedded", "production")

BASE = """\
name: egress
repos: [{{url: "file://{root}/alpha"}}]
transform: {{run: "true"}}
"""


@pytest.fixture
def base(settings):
    return BASE.format(root=settings.REPO_ROOTS[0])


def _errors(text) -> dict[str, str]:
    with pytest.raises(CampaignSpecError) as info:
        spec_parse(text)
    return {e.path: e.message for e in info.value.errors}


def test_network_defaults_to_none_and_old_limits_none_still_works(base):
    assert spec_parse(base).data["network"] == "none"
    old = spec_parse(base + "limits: {network: none}\n").data
    assert old["network"] == "none" and "network" not in old["limits"]


def test_allowlist_and_package_indexes_are_normalised(base):
    text = base + (
        'network:\n  allow: [API.example.com, "*.example.org", "git.example.com:22"]\n'
        "  package_indexes: true\nlimits: {egress_mb: 50}\n"
    )
    data = spec_parse(text).data
    assert data["network"] == {
        "allow": ["api.example.com", "*.example.org", "git.example.com:22"],
        "package_indexes": True,
    }
    assert data["limits"]["egress_mb"] == 50
    fields = spec_network_fields(data["network"], egress_mb=50)
    assert fields == {
        "network": NetworkPolicy.ALLOWLIST,
        "allowed_domains": ("api.example.com", "*.example.org", "git.example.com:22"),
        "package_indexes": True,
        "egress_mb": 50,
    }
    # The normalised value parses again to the same thing (stored specs are re-read by runs).
    assert spec_network_fields(spec_parse(text).data["network"], egress_mb=50) == fields
    assert spec_network_fields("none") == {"network": NetworkPolicy.NONE, "egress_mb": 1024}


@pytest.mark.parametrize(
    ("snippet", "path", "words"),
    [
        ("network: open\n", "network", ["`open`", "name the hosts", "allow:"]),
        ("limits: {network: open}\n", "limits.network", ["top-level `network:`", "allow:"]),
        ("network: {allow: ['*']}\n", "network.allow[0]", ["every host"]),
        ("network: {allow: [10.0.0.1]}\n", "network.allow[0]", ["IP address", "host name"]),
        ("network: {allow: ['[::1]:443']}\n", "network.allow[0]", ["IP address"]),
        ("network: {allow: [https://x.example.com/]}\n", "network.allow[0]", ["URL"]),
        ("network: {allow: [ok.example.com], everything: true}\n", "network.everything", []),
        ("network: none\nlimits: {network: none, egress_mb: 0}\n", "limits.egress_mb", []),
        (
            "network: {allow: [pypi.org, 'gateway.convoy.internal:80']}\n",
            "network.allow[1]",
            ["keeps for itself", "grant"],
        ),
    ],
)
def test_refusals_name_the_field_and_say_what_to_write(base, snippet, path, words):
    errors = _errors(base + snippet)
    assert path in errors, errors
    for word in words:
        assert word in errors[path], errors[path]


def test_network_given_twice_is_refused(base):
    errors = _errors(base + "limits: {network: none}\nnetwork: {allow: [api.example.com]}\n")
    assert "limits.network" in errors
