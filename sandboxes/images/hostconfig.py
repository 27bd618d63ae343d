"""The host's package-client configuration, carried into image builds without naming any host.

Convoy never writes a mirror or registry into the repository: apt sources come from the host's
own apt configuration (mmdebstrap reads it), and the pip, npm and CA settings the host uses are
read here and handed to the build sandbox. Files they name (a CA bundle, a constraints file, a
local index) are bound read-only under `/tmp/convoy-host/` inside the build, which is a tmpfs,
so nothing of the host lands in the image.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sandboxes.egress.packages import url_without_credentials

INSIDE = "/tmp/convoy-host"  # noqa: S108 (the build's own tmpfs)
CA_VARIABLES = (
    "SSL_CERT_FILE",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
)
# pip options whose values are local paths or file:// URLs (space-separated lists for some).
_PIP_PATH_OPTIONS = ("cert", "client-cert", "constraint", "requirement", "find-links",
                     "extra-index-url", "index-url")  # fmt: skip
# A client certificate's key is the operator's credential: a build step (a package's install
# script) could copy it into the image. An index that needs one is reached from a campaign
# with a granted secret instead.
_PIP_NOT_CARRIED = ("client-cert",)
# Values that only make sense on the host (its cache, its log, its interpreter's site).
_PIP_SKIPPED = ("cache-dir", "log", "target", "prefix", "root", "src", "user", "python")


@dataclass
class ClientConfig:
    """Read-only binds (host path, path inside the build) and variables for build steps."""

    binds: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def bind(self, host_path: str) -> str | None:
        """Make a host file or directory visible in the build; its path there, or None."""
        path = Path(host_path)
        if not path.exists():
            return None  # the host's config names a path it does not have: pip would warn
        for host, inside in self.binds:
            if host == str(path):
                return inside
        inside = f"{INSIDE}/{len(self.binds)}-{path.name}"
        self.binds.append((str(path), inside))
        return inside


def apt_sources_digest(root: Path = Path("/etc/apt")) -> str:
    """sha256 of the host's apt sources: part of a Debian image's key (another mirror or suite
    set is another image)."""
    digest = hashlib.sha256()
    files = [root / "sources.list"]
    listing = root / "sources.list.d"
    if listing.is_dir():
        files += sorted(p for p in listing.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        except OSError:
            continue
    return digest.hexdigest()


def host_architecture() -> str:
    dpkg = shutil.which("dpkg")
    if dpkg:
        out = subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.strip()
    return os.uname().machine


def _pip_config() -> dict[str, str]:
    """The host's effective pip options, by name: global < install < PIP_* variables."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    if out.returncode != 0:
        return {}
    ranked: dict[str, tuple[int, str]] = {}
    rank = {"global": 0, "install": 1, ":env:": 2}
    for line in out.stdout.splitlines():
        key, sep, raw = line.partition("=")
        section, _, option = key.rpartition(".")
        if not sep or section not in rank or option in _PIP_SKIPPED:
            continue
        try:
            value = str(ast.literal_eval(raw))
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        if option not in ranked or rank[section] >= ranked[option][0]:
            ranked[option] = (rank[section], value)
    return {option: value for option, (_, value) in ranked.items()}


def _carry_pip(config: ClientConfig) -> None:
    for option, value in _pip_config().items():
        if option in _PIP_NOT_CARRIED:
            continue
        # The build's steps run packages' install scripts: no operator credentials in URLs.
        value = " ".join(url_without_credentials(token) for token in value.split())
        if option in _PIP_PATH_OPTIONS:
            carried = []
            for token in value.split():
                local = token.removeprefix("file://") if token.startswith("file://") else token
                if local.startswith("/"):
                    # A local index or file: visible at another path inside the build.
                    inside = _bind_containing(config, local)
                    if inside is None:
                        continue
                    token = f"file://{inside}" if token.startswith("file://") else inside
                carried.append(token)
            if not carried:
                continue
            value = " ".join(carried)
        config.env[f"PIP_{option.upper().replace('-', '_')}"] = value


def _bind_containing(config: ClientConfig, local: str) -> str | None:
    """Bind a path named by the config; for a URL into a tree (`/srv/wheels/simple`) bind the
    top directory so relative links out of it (`../files/x.whl`) still resolve."""
    path = Path(local)
    top = path
    if path.name == "simple" and path.parent != Path("/"):
        top = path.parent
    inside = config.bind(str(top))
    if inside is None:
        return None
    return inside if top == path else f"{inside}/{path.relative_to(top)}"


def _carry_npm(config: ClientConfig) -> None:
    npm = shutil.which("npm")
    if not npm:
        return
    for option, variable in (("registry", "NPM_CONFIG_REGISTRY"), ("cafile", "NPM_CONFIG_CAFILE")):
        out = subprocess.run([npm, "config", "get", option], capture_output=True, text=True)
        value = out.stdout.strip()
        if out.returncode != 0 or not value or value in ("undefined", "null"):
            continue
        # A registry URL as pip's: the build's steps run packages' install scripts.
        value = (config.bind(value) or "") if option == "cafile" else url_without_credentials(value)
        if value:
            config.env[variable] = value


def package_client_config() -> ClientConfig:
    """What a build step needs to reach the package indexes the host reaches, as the host does."""
    config = ClientConfig()
    for variable in CA_VARIABLES:
        value = os.environ.get(variable)
        if value:
            inside = config.bind(value)
            if inside:
                config.env[variable] = inside
    _carry_pip(config)
    _carry_npm(config)
    # The image's own pip and npm caches would land in the image; builds never keep them.
    config.env.setdefault("PIP_NO_CACHE_DIR", "1")
    config.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return config
