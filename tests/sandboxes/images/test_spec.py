"""The image spec: what it accepts, the field each refusal names, and the cache key."""

import pytest

from core.errors import Invalid
from sandboxes.images.spec import field_for_package, host_suite, image_key, image_spec_parse

pytestmark = pytest.mark.shapes("embedded", "production")
BASE = {"suite": "bookworm", "arch": "amd64", "apt_sources": "x"}


def test_debian_spec_defaults_to_the_host_suite_and_adds_what_steps_need():
    spec = image_spec_parse({"pip": ["pytest"], "npm": "jscodeshift@17"})
    assert spec.kind == "debian"
    assert spec.base == host_suite()
    assert spec.apt_packages() == ["python3-venv", "nodejs", "npm", "git"]
    assert spec.canonical()["npm"] == ["jscodeshift@17"]


def test_key_ignores_order_of_apt_and_pip_but_not_of_run():
    a = image_spec_parse({"base": "debian:bookworm", "apt": ["git", "curl"], "pip": ["b", "a"]})
    b = image_spec_parse({"base": "bookworm", "apt": ["curl", "git", "git"], "pip": ["a", "b"]})
    assert image_key(a, resolved_base=BASE) == image_key(b, resolved_base=BASE)
    r1 = image_spec_parse({"base": "bookworm", "run": ["echo 1", "echo 2"]})
    r2 = image_spec_parse({"base": "bookworm", "run": ["echo 2", "echo 1"]})
    assert image_key(r1, resolved_base=BASE) != image_key(r2, resolved_base=BASE)


def test_key_changes_with_the_resolved_base():
    spec = image_spec_parse({"base": "bookworm"})
    other = {**BASE, "apt_sources": "another mirror"}
    assert image_key(spec, resolved_base=BASE) != image_key(spec, resolved_base=other)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"apt": ["git", "curl", "Bad Name"]}, "image.apt[2]"),
        ({"apt": ["git", "--allow-unauthenticated"]}, "image.apt[1]"),
        ({"pip": ["pytest", "/etc/passwd"]}, "image.pip[1]"),
        ({"pip": [""]}, "image.pip[0]"),
        ({"npm": {"a": 1}}, "image.npm"),
        ({"run": ["ok", 3]}, "image.run[1]"),
        ({"env": {"1BAD": "x"}}, "image.env"),
        ({"env": {"OK": ["x"]}}, "image.env.OK"),
        ({"base": "ubuntu:noble"}, "image.base"),
        ({"colour": "blue"}, "image.colour"),
        ({"oci": "not a ref"}, "image.oci"),
        ({"oci": "127.0.0.1:5000/a:1", "apt": ["git"]}, "image.apt"),
        ({"oci": "127.0.0.1:5000/a:1", "base": "bookworm"}, "image.base"),
        ({"base": "bookworm", "credentials_secret": "X"}, "image.credentials_secret"),
        (
            {"oci": "127.0.0.1:5000/a:1", "credentials_secret": "no spaces"},
            "image.credentials_secret",
        ),
        ([1], "image"),
    ],
)
def test_refusals_name_the_field(value, field, settings):
    settings.LOCAL_REGISTRIES = ["127.0.0.1:5000"]
    with pytest.raises(Invalid) as exc:
        image_spec_parse(value)
    assert exc.value.field == field
    assert exc.value.errors[0].field == field


def test_oci_spec_with_layers_on_top(settings):
    settings.LOCAL_REGISTRIES = ["127.0.0.1:5000"]
    spec = image_spec_parse(
        {"oci": "127.0.0.1:5000/team/python:3.12", "credentials_secret": "REGISTRY", "pip": ["x"]}
    )
    assert spec.kind == "oci" and spec.oci_is_local and spec.apt_packages() == []
    assert spec.canonical() == {
        "kind": "oci",
        "oci": "127.0.0.1:5000/team/python:3.12",
        "credentials_secret": "REGISTRY",
        "pip": ["x"],
    }
    assert not image_spec_parse({"oci": "registry.example/team/python:3.12"}).oci_is_local


def test_string_shorthands(settings):
    settings.LOCAL_REGISTRIES = ["127.0.0.1:5000"]
    assert image_spec_parse("debian:bookworm").base == "bookworm"
    assert image_spec_parse("127.0.0.1:5000/team/tiny:1").kind == "oci"


@pytest.mark.parametrize(
    "oci", ["127.0.0.1:6379/x", "localhost:8000/team/x:1", "LOCALHOST:6379/x", "127.0.0.1/x"]
)
def test_a_registry_on_this_machine_must_be_listed(settings, oci):
    """skopeo talks to a registry on this machine without TLS checks: `127.0.0.1:<any port>`
    sent requests to the web server or Redis. Only the registries an operator lists pass."""
    settings.LOCAL_REGISTRIES = ["127.0.0.1:5000", "localhost:5000"]
    with pytest.raises(Invalid) as refused:
        image_spec_parse({"oci": oci})
    assert refused.value.field == "image.oci"
    assert "CONVOY_LOCAL_REGISTRIES" in refused.value.message
    assert image_spec_parse({"oci": "localhost:5000/team/x:1"}).oci_is_local


def test_field_for_package_finds_the_entry_written():
    spec = image_spec_parse({"apt": ["git", "curl", "pyton3=3.11"], "pip": ["Py_Test>=8"]})
    assert field_for_package(spec, "apt", "pyton3") == "image.apt[2]"
    assert field_for_package(spec, "pip", "py-test") == "image.pip[0]"
    assert field_for_package(spec, "apt", "python3-venv") == "image.apt"
