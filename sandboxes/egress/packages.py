"""This host's own package-client configuration: the index hosts `package_indexes: true` allows,
and the environment a sandbox needs to install exactly as the host does, through the proxy.

Nothing here names a registry: pip's, npm's and apt's own configuration (files, environment,
and the clients' built-in defaults) say which hosts this host installs from.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sandboxes.egress.policy import AllowRule, normalise_host

# The CA variables a host may set; each one that is set is handed in with its file mounted.
CA_VARIABLES = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
)
PIP_SECTIONS = ("global", "install", "download")


@dataclass
class PackageIndexes:
    """Where this host installs from, as URLs (file:// ones included but never allowed)."""

    pip_index_url: str | None = None
    pip_extra_index_urls: list[str] = field(default_factory=list)
    pip_default_hosts: list[str] = field(default_factory=list)
    npm_registries: list[str] = field(default_factory=list)
    apt_uris: list[str] = field(default_factory=list)
    ca_env: dict[str, str] = field(default_factory=dict)

    def urls(self) -> list[str]:
        pip = [self.pip_index_url] if self.pip_index_url else []
        return [*pip, *self.pip_extra_index_urls, *self.npm_registries, *self.apt_uris]


def package_indexes_read(
    *, env: Mapping[str, str] | None = None, home: Path | None = None, etc: Path = Path("/etc")
) -> PackageIndexes:
    """Read pip's, npm's and apt's configuration the way those clients would on this host."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home()) if home is None else home
    pip = _pip_config(env=env, home=home, etc=etc)
    index_url = env.get("PIP_INDEX_URL") or pip.get("index-url")
    extra = (env.get("PIP_EXTRA_INDEX_URL") or pip.get("extra-index-url") or "").split()
    return PackageIndexes(
        pip_index_url=index_url,
        pip_extra_index_urls=extra,
        pip_default_hosts=[] if index_url else _pip_default_hosts(),
        npm_registries=_npm_registries(env=env, home=home),
        apt_uris=_apt_uris(etc / "apt"),
        ca_env={k: env[k] for k in CA_VARIABLES if env.get(k)},
    )


def package_index_rules(indexes: PackageIndexes) -> list[AllowRule]:
    """Allow rules for every http(s) index host (exact names, the URL's port or 443/80)."""
    rules: list[AllowRule] = []
    for url in indexes.urls():
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            continue
        ports = frozenset({parts.port}) if parts.port else frozenset({443, 80})
        rule = AllowRule(normalise_host(parts.hostname), ports, index=True)
        if rule not in rules:
            rules.append(rule)
    for host in indexes.pip_default_hosts:
        rule = AllowRule(normalise_host(host), index=True)
        if rule not in rules:
            rules.append(rule)
    return rules


def url_without_credentials(url: str) -> str:
    """`url` without its `user:password@`. An index URL of the host's may carry the operator's
    credentials (`https://__token__:…@index/simple`); what a sandbox or an image build gets is
    the address only: a campaign whose index needs credentials gets them as a granted secret."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def package_client_env(indexes: PackageIndexes) -> dict[str, str]:
    """Index and CA variables for the sandbox (file:// indexes are dropped: not mounted;
    credentials in an index URL are dropped: see `url_without_credentials`)."""
    env = dict(indexes.ca_env)
    main = url_without_credentials(indexes.pip_index_url or "")
    web = [url_without_credentials(u) for u in indexes.pip_extra_index_urls if _is_web(u)]
    if main and _is_web(main):
        env["PIP_INDEX_URL"] = main
    extra = [u for u in web if u != main]
    if extra:
        env["PIP_EXTRA_INDEX_URL"] = " ".join(extra)
    npm = [url_without_credentials(u) for u in indexes.npm_registries if _is_web(u)]
    if npm:
        env["npm_config_registry"] = npm[0]
    return env


def package_client_files(indexes: PackageIndexes) -> list[Path]:
    """Host files the sandbox needs read-only at the same path (CA bundles named by env)."""
    return sorted({Path(v) for v in indexes.ca_env.values() if Path(v).exists()})


def sandbox_proxy_env(port: int) -> dict[str, str]:
    """Environment that makes ordinary tools use the in-sandbox relay on 127.0.0.1:`port`."""
    url = f"http://127.0.0.1:{port}"
    env = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = url
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
    # pip reads HTTPS_PROXY too; npm only reads its own config (and not ALL_PROXY).
    env["PIP_PROXY"] = url
    env["npm_config_proxy"] = env["npm_config_https_proxy"] = url
    # git: http.proxy without touching a config file in the sandbox's home.
    env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.proxy", GIT_CONFIG_VALUE_0=url)
    return env


def apt_proxy_conf(port: int) -> str:
    """An apt.conf.d snippet for images that run apt-get inside the sandbox."""
    url = f"http://127.0.0.1:{port}"
    return f'Acquire::http::Proxy "{url}";\nAcquire::https::Proxy "{url}";\n'


def _is_web(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def _pip_config(*, env: Mapping[str, str], home: Path, etc: Path) -> dict[str, str]:
    """pip's config files in pip's order (later wins): site-wide, user, $PIP_CONFIG_FILE."""
    if env.get("PIP_CONFIG_FILE") == os.devnull:
        return {}
    xdg_dirs = (env.get("XDG_CONFIG_DIRS") or str(etc / "xdg")).split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs] + [etc / "pip.conf"]
    files += [home / ".pip" / "pip.conf"]
    files += [Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf"]
    if env.get("VIRTUAL_ENV"):
        files.append(Path(env["VIRTUAL_ENV"]) / "pip.conf")
    if env.get("PIP_CONFIG_FILE"):
        files.append(Path(env["PIP_CONFIG_FILE"]))
    values: dict[str, str] = {}
    for path in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in PIP_SECTIONS:
            if parser.has_section(section):
                for key in ("index-url", "extra-index-url"):
                    if parser.has_option(section, key):
                        values[key] = parser.get(section, key)
    return values


def _pip_default_hosts() -> list[str]:
    """The index pip uses when none is configured, from pip itself (not written here)."""
    try:
        # Imported here: pip is optional on the host, and its internals are slow to import.
        from pip._internal.models.index import PyPI
    except ImportError:
        return []
    return [PyPI.netloc, PyPI.file_storage_domain]


def _npm_registries(*, env: Mapping[str, str], home: Path) -> list[str]:
    found: list[str] = []
    npm = shutil.which("npm", path=env.get("PATH"))
    if npm:
        try:
            out = subprocess.run(
                [npm, "config", "get", "registry"],
                capture_output=True,
                text=True,
                timeout=20,
                env={**env, "npm_config_update_notifier": "false"},
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out.startswith("http"):
            found.append(out)
    for name in ("npm_config_registry", "NPM_CONFIG_REGISTRY"):
        if env.get(name):
            found.append(env[name])
    # Scoped registries (@scope:registry=…) live only in .npmrc files.
    for path in (Path(env.get("NPM_CONFIG_USERCONFIG") or home / ".npmrc"),):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition("=")
            if key.strip().endswith("registry") and value.strip().startswith("http"):
                found.append(value.strip())
    return list(dict.fromkeys(found))


def apt_uris_read(apt_dir: Path) -> list[str]:
    """The enabled source URIs of an apt configuration directory (a host's, or an image's)."""
    return _apt_uris(apt_dir)


_DEB_LINE = re.compile(r"^\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?(\S+)")


def _apt_uris(apt_dir: Path) -> list[str]:
    """URIs of apt's one-line (.list) and deb822 (.sources) entries that are enabled."""
    uris: list[str] = []
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        try:
            text = path.read_text()
        except OSError:
            continue
        uris += [m.group(1) for line in text.splitlines() if (m := _DEB_LINE.match(line))]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields = _deb822(stanza)
            if fields.get("enabled", "yes").lower() == "no":
                continue
            uris += fields.get("uris", "").split()
    return list(dict.fromkeys(uris))


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line.startswith("#"):
            continue
        if line[:1] in (" ", "\t") and key:
            fields[key] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            fields[key] = value.strip()
    return fields
