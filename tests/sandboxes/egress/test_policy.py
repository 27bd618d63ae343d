"""The `network:` value: what parses, what is refused (naming the field), what matches."""

import pytest

from core.errors import Invalid
from sandboxes.egress.policy import AllowRule, Limits, modal_network_kwargs, network_parse

pytestmark = pytest.mark.shapes("embedded", "production")


def test_none_and_missing_allow_nothing():
    for value in (None, "none", {"allow": []}, {}):
        policy = network_parse(value)
        assert policy.blocks_all
        assert not policy.allows("api.example.com", 443)
    assert network_parse("none").as_spec() == "none"


def test_allow_list_parses_names_wildcards_and_ports():
    policy = network_parse(
        {
            "allow": ["API.example.com.", "*.example.org", "git.example.com:22"],
            "package_indexes": True,
        }
    )
    assert policy.package_indexes
    assert policy.rules == (
        AllowRule("api.example.com"),
        AllowRule("*.example.org"),
        AllowRule("git.example.com", frozenset({22})),
    )
    assert policy.as_spec() == {
        "allow": ["api.example.com", "*.example.org", "git.example.com:22"],
        "package_indexes": True,
    }


def test_same_host_twice_merges_ports():
    policy = network_parse({"allow": ["h.example.com:8443", "h.example.com:9000"]})
    assert policy.rules == (AllowRule("h.example.com", frozenset({8443, 9000})),)


@pytest.mark.parametrize(
    "host, port, allowed",
    [
        ("api.example.com", 443, True),
        ("api.example.com", 80, True),
        ("API.Example.Com.", 443, True),
        ("api.example.com", 8443, False),
        ("x.api.example.com", 443, False),
        ("a.example.org", 443, True),
        ("a.b.example.org", 443, False),
        ("example.org", 443, False),
        (".example.org", 443, False),
        ("git.example.com", 22, True),
        ("git.example.com", 443, False),
        ("evil-example.org", 443, False),
    ],
)
def test_matching(host, port, allowed):
    policy = network_parse({"allow": ["api.example.com", "*.example.org", "git.example.com:22"]})
    assert policy.allows(host, port) is allowed


@pytest.mark.parametrize(
    "value, field, says",
    [
        ("open", "network", "name the hosts"),
        ("everything", "network", "expected `none`"),
        (["a.example.com"], "network", "expected `none` or a mapping"),
        ({"allow": "a.example.com"}, "network.allow", "allow: [a.example.com]"),
        ({"alow": []}, "network.alow", "unknown key"),
        ({"package_indexes": "yes"}, "network.package_indexes", "true or false"),
        ({"allow": ["a.example.com", "b.example.com", "10.0.0.1"]}, "network.allow[2]", "names"),
        ({"allow": ["[::1]:443"]}, "network.allow[0]", "IP address"),
        ({"allow": ["::1"]}, "network.allow[0]", "IP address"),
        ({"allow": ["127.0.0.1:5432"]}, "network.allow[0]", "IP address"),
        ({"allow": ["*"]}, "network.allow[0]", "every host"),
        ({"allow": ["*:443"]}, "network.allow[0]", "every host"),
        ({"allow": ["*.org"]}, "network.allow[0]", "top-level"),
        ({"allow": ["a.*.example.org"]}, "network.allow[0]", "first label"),
        ({"allow": ["https://api.example.com/v1"]}, "network.allow[0]", "only the host name"),
        ({"allow": ["api.example.com:http"]}, "network.allow[0]", "port must be a number"),
        ({"allow": ["api.example.com:70000"]}, "network.allow[0]", "port must be a number"),
        ({"allow": ["bad name.com"]}, "network.allow[0]", "not a valid host name"),
        ({"allow": [""]}, "network.allow[0]", "expected a host name"),
        ({"allow": [443]}, "network.allow[0]", "expected a host name"),
    ],
)
def test_refusals_name_the_field_and_say_what_to_write(value, field, says):
    with pytest.raises(Invalid) as e:
        network_parse(value)
    assert e.value.field == field
    assert says in e.value.message
    assert e.value.status == 422


def test_field_prefix_is_the_callers():
    with pytest.raises(Invalid) as e:
        network_parse("open", field_name="limits.network")
    assert e.value.field == "limits.network"


def test_limits_default_to_one_gigabyte():
    assert Limits().egress_bytes == 1024 * 1024 * 1024


def test_modal_translation():
    assert modal_network_kwargs(network_parse("none")) == {"block_network": True}
    policy = network_parse({"allow": ["api.example.com", "*.example.org", "git.example.com:22"]})
    assert modal_network_kwargs(policy) == {
        "outbound_domain_allowlist": ["api.example.com", "*.example.org", "git.example.com"]
    }


@pytest.mark.parametrize(
    "entry", ["gateway.convoy.internal:80", "*.convoy.internal:80", "localhost:5432", "a.localhost"]
)
def test_a_campaign_may_not_allow_convoys_own_names(entry):
    """The proxy routes gateway.convoy.internal to the model gateway on the host; a model
    variant's grant adds it to that variant's sandbox. A campaign's own `network.allow` naming
    it (or this host) reached the gateway without a grant."""
    from sandboxes.egress.policy import reserved_refuse

    with pytest.raises(Invalid) as e:
        reserved_refuse(network_parse({"allow": ["pypi.org", entry]}))
    assert e.value.field == "network.allow[1]"
    assert "keeps for itself" in e.value.message
