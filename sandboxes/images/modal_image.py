"""The same `image:` spec as a `modal.Image` chain, for the Modal backend (built in Modal's cloud).

A pure translation: the caller passes the `modal.Image` class (the backend imports `modal` on
first use, as it is heavy; tests pass a recording fake), and for OCI images with credentials
a `modal.Secret` holding REGISTRY_USERNAME and REGISTRY_PASSWORD.

Differences from the local builder (docs/images.md): a Debian base on the suite Modal's
`debian_slim` uses is `debian_slim()` (other suites: `from_registry("debian:<suite>-slim")`);
there `pip` installs into the image's own Python with `pip_install` (first on PATH already),
where the local builder uses /opt/convoy-venv.
"""

from __future__ import annotations

from typing import Any

from sandboxes.images.cloud_image import image_env_vars, npm_commands, pip_venv_commands
from sandboxes.images.spec import ImageSpec

# The suite of Modal's debian_slim images (its image builder version 2024.10 and later).
MODAL_SLIM_SUITE = "bookworm"


def modal_image_from_spec(spec: ImageSpec, *, image_api: Any, secret: Any = None) -> Any:
    """The `modal.Image` for `spec`, as `image_api.debian_slim()…` or `from_registry(…)…`."""
    if spec.kind == "oci":
        image = image_api.from_registry(spec.oci, secret=secret)
    elif spec.base == MODAL_SLIM_SUITE:
        image = image_api.debian_slim()
    else:
        image = image_api.from_registry(f"debian:{spec.base}-slim")
    modal_python = spec.kind == "debian" and spec.base == MODAL_SLIM_SUITE
    packages = spec.apt_packages()
    if modal_python and "python3-venv" not in spec.apt:
        # Only the local virtualenv needs it; pip_install uses Modal's own Python.
        packages = [p for p in packages if p != "python3-venv"]
    if packages:
        image = image.apt_install(*packages)
    if spec.pip:
        if modal_python:
            image = image.pip_install(*spec.pip)
        else:
            # No Modal-managed Python here: the same virtualenv the local builder makes.
            image = image.run_commands(*pip_venv_commands(spec))
    if spec.npm:
        image = image.run_commands(*npm_commands(spec))
    if spec.run:
        image = image.run_commands(*spec.run)
    return image.env(image_env_vars(spec))
