"""The host's package-client configuration: which index hosts `package_indexes: true` allows,
and the environment handed into a sandbox. Read from files and env given to the reader."""

import os
from pathlib import Path

import pytest

from sandboxes.egress.packages import (
    apt_proxy_conf,
    package_client_env,
    package_index_rules,
    package_indexes_read,
    sandbox_proxy_env,
)
from sandboxes.egress.policy import AllowRule, network_parse

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def host(tmp_path) -> tuple[Path, Path]:
    etc, home = tmp_path / "etc", tmp_path / "home"
    (etc / "apt" / "sources.list.d").mkdir(parents=True)
    (etc / "xdg" / "pip").mkdir(parents=True)
    (home / ".config" / "pip").mkdir(parents=True)
    (etc / "pip.conf").write_text("[global]\nindex-url = https://pypi.mirror.test/simple\n")
    (home / ".config" / "pip" / "pip.conf").write_text(
        "[install]\nextra-index-url = https://extra.test:8443/simple file:///opt/wheels\n"
    )
    (etc / "apt" / "sources.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg] http://deb.mirror.test/debian bookworm main\n"
    )
    (etc / "apt" / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: https://apt.one.test/debian\n  https://apt.two.test/debian\n"
        "Suites: bookworm\n\nTypes: deb\nEnabled: no\nURIs: http://disabled.test/\n"
    )
    (etc / "apt" / "sources.list.d" / "b.list.disabled").write_text("deb http://off.test/ x y\n")
    (home / ".npmrc").write_text(
        "registry=https://npm.mirror.test/\n@co:registry=https://npm.co.test/\n"
    )
    return etc, home


def test_reads_pip_npm_and_apt_configuration(host):
    etc, home = host
    env = {"PATH": "", "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}
    indexes = package_indexes_read(env=env, home=home, etc=etc)
    assert indexes.pip_index_url == "https://pypi.mirror.test/simple"
    assert indexes.pip_extra_index_urls == ["https://extra.test:8443/simple", "file:///opt/wheels"]
    assert indexes.pip_default_hosts == []  # an index is configured: pip's default is not used
    assert indexes.npm_registries == ["https://npm.mirror.test/", "https://npm.co.test/"]
    assert indexes.apt_uris == [
        "http://deb.mirror.test/debian",
        "https://apt.one.test/debian",
        "https://apt.two.test/debian",
    ]
    rules = package_index_rules(indexes)
    assert AllowRule("extra.test", frozenset({8443}), index=True) in rules
    assert {r.pattern for r in rules} == {
        "pypi.mirror.test",
        "extra.test",
        "npm.mirror.test",
        "npm.co.test",
        "deb.mirror.test",
        "apt.one.test",
        "apt.two.test",
    }
    policy = network_parse({"package_indexes": True}).with_rules(rules)
    assert policy.allows("apt.two.test", 443) and not policy.allows("disabled.test", 80)

    client = package_client_env(indexes)
    assert client["PIP_INDEX_URL"] == "https://pypi.mirror.test/simple"
    assert client["PIP_EXTRA_INDEX_URL"] == "https://extra.test:8443/simple"
    assert client["npm_config_registry"] == "https://npm.mirror.test/"
    assert client["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"


def test_environment_wins_and_pip_default_comes_from_pip(host):
    etc, home = host
    env = {"PATH": "", "PIP_INDEX_URL": "https://env.test/simple"}
    assert package_indexes_read(env=env, home=home, etc=etc).pip_index_url == (
        "https://env.test/simple"
    )
    (etc / "pip.conf").unlink()
    indexes = package_indexes_read(env={"PATH": ""}, home=home, etc=etc)
    assert indexes.pip_index_url is None
    assert len(indexes.pip_default_hosts) == 2  # pip's own default index and file host


def test_sandbox_proxy_env_points_every_client_at_the_relay():
    env = sandbox_proxy_env(3128)
    for name in ("HTTP_PROXY", "https_proxy", "ALL_PROXY", "PIP_PROXY", "npm_config_https_proxy"):
        assert env[name] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == "localhost,127.0.0.1,::1"
    assert (env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"]) == (
        "http.proxy",
        "http://127.0.0.1:3128",
    )
    assert 'Acquire::http::Proxy "http://127.0.0.1:3128";' in apt_proxy_conf(3128)


def test_credentials_in_the_hosts_index_urls_stay_on_the_host(host, monkeypatch):
    """An authenticated index (`https://__token__:…@index/simple`) put the operator's
    credential into every campaign's sandbox and every image build step, ungranted; only the
    address goes in, and the key of a pip client certificate is not carried into builds."""
    from sandboxes.images.hostconfig import package_client_config

    etc, home = host
    env = {
        "PATH": "",
        "PIP_INDEX_URL": "https://__token__:s3cr3t-idx@pypi.corp.test/simple",
        "PIP_EXTRA_INDEX_URL": "https://u:extra-pw@extra.corp.test/simple",
    }
    (home / ".npmrc").write_text("registry=https://npm:npm-pw@npm.corp.test/\n")
    indexes = package_indexes_read(env=env, home=home, etc=etc)
    client = package_client_env(indexes)
    assert client["PIP_INDEX_URL"] == "https://pypi.corp.test/simple"
    assert client["PIP_EXTRA_INDEX_URL"] == "https://extra.corp.test/simple"
    assert client["npm_config_registry"] == "https://npm.corp.test/"
    assert not any("pw" in v or "s3cr3t" in v for v in client.values())
    # The allow rules still name the hosts.
    assert {"pypi.corp.test", "extra.corp.test"} <= {
        r.pattern for r in package_index_rules(indexes)
    }

    key = home / "client.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    monkeypatch.setenv("PIP_INDEX_URL", env["PIP_INDEX_URL"])
    monkeypatch.setenv("PIP_CLIENT_CERT", str(key))
    build = package_client_config()
    assert build.env["PIP_INDEX_URL"] == "https://pypi.corp.test/simple"
    assert "PIP_CLIENT_CERT" not in build.env
    assert not any(str(key) == host_path for host_path, _ in build.binds)

    # The host's npm names an authenticated registry: builds get its address only.
    bin_dir = home / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    registry = "https://u:npm-t0ken@npm.corp.test/"
    npm.write_text(f'#!/bin/sh\n[ "$3" = registry ] && echo {registry} || echo undefined\n')
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    build = package_client_config()
    assert build.env["NPM_CONFIG_REGISTRY"] == "https://npm.corp.test/"
    assert not any("npm-t0ken" in value for value in build.env.values())
