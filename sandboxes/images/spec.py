"""The `image:` spec value: parsing, normalising, and the cache key of what it builds.

Two shapes (docs/images.md):
    {base: "debian:bookworm", apt: [...], pip: [...], npm: [...], run: [...], env: {...}}
    {oci: "127.0.0.1:5000/team/python:3.12", credentials_secret: NAME, pip/npm/run/env on top}
Every refusal is `core.errors.Invalid` naming the field (`image.apt[2]`), so a campaign spec
error points at the line the manager wrote.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from core.errors import Invalid

# Bumped when the builder changes what a spec produces, so old images stop matching.
BUILDER_VERSION = 3  # 2: egress mount points; 3: the sandbox user, hosts, gitconfig
KINDS = ("debian", "oci")
KEYS = ("base", "oci", "credentials_secret", "apt", "pip", "npm", "run", "env")
# Packages a step needs in a Debian base; added to the apt list when the step is used.
IMPLIED_APT = {"pip": ("python3-venv",), "npm": ("nodejs", "npm")}
# Every Debian image has git: the pipeline reads each variant's diff with git in the sandbox.
ALWAYS_APT = ("git",)

_SUITE = re.compile(r"^[a-z][a-z0-9-]{1,30}\Z")
# Debian policy 5.6.1 (name), optionally `=version` or `:arch`.
_APT = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_OCI = re.compile(
    r"^(?P<registry>[A-Za-z0-9.-]+(:[0-9]+)?)/(?P<name>[a-z0-9]+([._/-][a-z0-9]+)*)"
    r"(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_SECRET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
LOCAL_REGISTRIES = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class ImageSpec:
    """A validated `image:` value. Lists keep the order written (error fields index into them)."""

    kind: str
    base: str = ""  # Debian suite (kind "debian")
    oci: str = ""  # registry reference (kind "oci")
    credentials_secret: str = ""
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def apt_packages(self) -> list[str]:
        """What apt installs: the spec's packages plus what the pip and npm steps need."""
        wanted = list(dict.fromkeys(self.apt))
        if self.kind == "debian":
            for step, packages in IMPLIED_APT.items():
                if getattr(self, step):
                    wanted += [p for p in packages if p not in wanted]
            wanted += [p for p in ALWAYS_APT if p not in wanted]
        return wanted

    def canonical(self) -> dict:
        """The normalised form: what the key hashes and what the Image row stores."""
        out: dict = {"kind": self.kind}
        if self.kind == "debian":
            out["base"] = f"debian:{self.base}"
            out["apt"] = sorted(set(self.apt_packages()))
        else:
            out["oci"] = self.oci
            if self.credentials_secret:
                out["credentials_secret"] = self.credentials_secret
        # pip and npm resolve all their arguments together: order does not change the result.
        for name in ("pip", "npm"):
            if getattr(self, name):
                out[name] = sorted(set(getattr(self, name)))
        if self.run:
            out["run"] = list(self.run)  # order matters
        if self.env:
            out["env"] = dict(sorted(self.env.items()))
        return out

    @property
    def oci_registry(self) -> str:
        return self.oci.split("/", 1)[0] if self.oci else ""

    @property
    def oci_is_local(self) -> bool:
        """A registry on this machine (plain HTTP: no TLS)."""
        return self.oci_registry.rsplit(":", 1)[0].lower() in LOCAL_REGISTRIES

    def oci_local_refusal(self) -> str | None:
        """Why a registry on this machine may not be used (None when it may, or is not local):
        only the `host:port`s `CONVOY_LOCAL_REGISTRIES` lists are registries; any other port
        of the loopback is another service (the web server, Redis), which Convoy would talk
        to without TLS checks."""
        if not self.oci_is_local or self.oci_registry.lower() in settings.LOCAL_REGISTRIES:
            return None
        return (
            f"the registry {self.oci_registry} is on this machine and is not one of its"
            " registries (an operator lists those in CONVOY_LOCAL_REGISTRIES)"
        )


def host_suite(os_release: Path = Path("/etc/os-release")) -> str:
    """The host's Debian suite (VERSION_CODENAME), the default base."""
    try:
        text = os_release.read_text()
    except OSError:
        text = ""
    values = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    suite = values.get("VERSION_CODENAME", "").strip().strip('"')
    if values.get("ID", "").strip('"') != "debian" or not suite:
        raise Invalid(
            "the host is not Debian, so there is no default suite: name one (debian:bookworm)",
            field="image.base",
        )
    return suite


def _strings(value, where: str, *, pattern: re.Pattern | None = None, what: str = "") -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]  # `pip: pytest` is a list of one
    if not isinstance(value, list):
        raise Invalid("expected a list of strings", field=where)
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise Invalid("expected a non-empty string", field=f"{where}[{i}]")
        item = item.strip()
        # An argument starting with "-" would be read as an option by apt, pip or npm.
        if item.startswith("-"):
            raise Invalid(f"{item!r}: options are not allowed here", field=f"{where}[{i}]")
        if pattern and not pattern.match(item):
            raise Invalid(f"{item!r} is not {what}", field=f"{where}[{i}]")
        out.append(item)
    return tuple(out)


def _pip_requirement(item: str, where: str) -> None:
    # A requirement (`pytest==8.*`, `libcst`, `pkg[extra]>=1; python_version>"3"`) or a URL;
    # not a local path, which would name a file of the Convoy host.
    if item.startswith((".", "/", "~", "file:")):
        raise Invalid(f"{item!r}: local paths are not allowed in image.pip", field=where)
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?|^(https?|git\+https?)://", item):
        raise Invalid(f"{item!r} is not a pip requirement", field=where)


def image_spec_parse(value, *, where: str = "image") -> ImageSpec:
    """Validate an `image:` value (a dict, or a string naming a Debian base or an OCI image)."""
    if isinstance(value, str):
        value = {"oci": value} if "/" in value else {"base": value}
    if not isinstance(value, dict):
        raise Invalid("expected a mapping (base/apt/pip/npm/run/env, or oci)", field=where)
    for key in value:
        if key not in KEYS:
            raise Invalid(
                f"unknown key {key!r}; expected one of {', '.join(KEYS)}", field=f"{where}.{key}"
            )
    oci = value.get("oci")
    kind = "oci" if oci is not None else "debian"
    fields: dict = {"kind": kind}
    if kind == "oci":
        if "base" in value:
            raise Invalid("give either base or oci, not both", field=f"{where}.base")
        if "apt" in value:
            raise Invalid(
                "apt installs into Debian bases; on an oci image use run: [apt-get install …]",
                field=f"{where}.apt",
            )
        if not isinstance(oci, str) or not _OCI.match(oci.strip()):
            raise Invalid(
                "expected <registry>/<name>[:tag][@sha256:…], e.g. 127.0.0.1:5000/team/python:3.12",
                field=f"{where}.oci",
            )
        fields["oci"] = oci.strip()
        refusal = ImageSpec(kind="oci", oci=fields["oci"]).oci_local_refusal()
        if refusal:
            raise Invalid(refusal, field=f"{where}.oci")
        secret = value.get("credentials_secret")
        if secret is not None:
            if not isinstance(secret, str) or not _SECRET.match(secret):
                raise Invalid("expected a secret name", field=f"{where}.credentials_secret")
            fields["credentials_secret"] = secret
    else:
        if "credentials_secret" in value:
            raise Invalid("credentials are for oci images", field=f"{where}.credentials_secret")
        base = value.get("base")
        if base is None:
            suite = host_suite()
        else:
            if not isinstance(base, str):
                raise Invalid("expected debian:<suite>", field=f"{where}.base")
            distro, _, suite = base.strip().rpartition(":")
            if distro not in ("", "debian") or not _SUITE.match(suite):
                raise Invalid(
                    f"{base!r}: expected debian:<suite> (e.g. debian:bookworm)",
                    field=f"{where}.base",
                )
        fields["base"] = suite
        fields["apt"] = _strings(
            value.get("apt"), f"{where}.apt", pattern=_APT, what="a Debian package name"
        )
    fields["pip"] = _strings(value.get("pip"), f"{where}.pip")
    for i, item in enumerate(fields["pip"]):
        _pip_requirement(item, f"{where}.pip[{i}]")
    fields["npm"] = _strings(value.get("npm"), f"{where}.npm")
    fields["run"] = _strings(value.get("run"), f"{where}.run")
    env = value.get("env") or {}
    if not isinstance(env, dict):
        raise Invalid("expected a mapping of NAME: value", field=f"{where}.env")
    clean_env = {}
    for name, val in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise Invalid(f"{name!r} is not a variable name", field=f"{where}.env")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise Invalid("expected a string", field=f"{where}.env.{name}")
        clean_env[name] = str(val)
    fields["env"] = clean_env
    return ImageSpec(**fields)


def image_key(spec: ImageSpec, *, resolved_base: dict) -> str:
    """sha256 of the normalised spec, the resolved base and the builder version."""
    body = {"spec": spec.canonical(), "base": resolved_base, "builder": BUILDER_VERSION}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def field_for_package(spec: ImageSpec, step: str, name: str, *, where: str = "image") -> str:
    """The spec field that asked for package `name` in `step` (`image.apt[2]`), or the step."""
    for i, item in enumerate(getattr(spec, step)):
        bare = re.split(r"[=<>!~;\[@: ]", item, maxsplit=1)[0]
        if bare.lower().replace("_", "-") == name.lower().replace("_", "-"):
            return f"{where}.{step}[{i}]"
    return f"{where}.{step}"
