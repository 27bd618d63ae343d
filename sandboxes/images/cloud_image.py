"""The same `image:` spec for the engines that build images in their cloud: the steps they
share with the local builder (sandboxes/images/build.py), and the Daytona `Image` (a Dockerfile
Daytona builds and caches; the Modal chain is in modal_image.py).

Pure translations: the caller passes the SDK's image class (tests pass the real one, or a
recording fake). Where a cloud base has no Python of its own, pip installs into the same
virtualenv the local builder makes, so PATH is the same on every engine.
"""

from __future__ import annotations

import shlex
from typing import Any

from sandboxes.images.build import NPM_PREFIX, SYSTEM_PATH, VENV
from sandboxes.images.spec import ImageSpec

APT_INSTALL = (
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
    "{packages} && rm -rf /var/lib/apt/lists/*"
)


def _quoted(items) -> str:
    return " ".join(shlex.quote(p) for p in items)


def pip_venv_commands(spec: ImageSpec) -> list[str]:
    """`pip:` into /opt/convoy-venv (made on first use), as the local builder does."""
    if not spec.pip:
        return []
    return [
        f"test -x {VENV}/bin/python || python3 -m venv {VENV}",
        f"{VENV}/bin/pip install {_quoted(spec.pip)}",
    ]


def npm_commands(spec: ImageSpec) -> list[str]:
    if not spec.npm:
        return []
    return [f"npm install --global --prefix {NPM_PREFIX} {_quoted(spec.npm)}"]


def image_env_vars(spec: ImageSpec) -> dict[str, str]:
    """The spec's `env`, with PATH led by the virtualenv's and npm's bin directories."""
    env = dict(spec.env)
    env["PATH"] = f"{VENV}/bin:{NPM_PREFIX}/bin:{env.get('PATH', SYSTEM_PATH)}"
    return env


def daytona_image_from_spec(spec: ImageSpec, *, image_api: Any) -> Any:
    """The `daytona.Image` for `spec`: the Debian suite's slim image (or the OCI reference),
    then apt, pip, npm, the spec's commands and its variables, one layer each."""
    image = image_api.base(spec.oci if spec.kind == "oci" else f"debian:{spec.base}-slim")
    commands = []
    packages = spec.apt_packages()
    if packages:
        commands.append(APT_INSTALL.format(packages=_quoted(packages)))
    commands += pip_venv_commands(spec) + npm_commands(spec) + list(spec.run)
    if commands:
        image = image.run_commands(*commands)
    return image.env(image_env_vars(spec))
