"""`manage.py image build|ls|rm|prune`: build an image from a spec, list, remove and prune them."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from campaigns.environment import images_prune
from core.errors import ConvoyError
from sandboxes.images.selectors import image_get, images_list
from sandboxes.images.services import image_ensure, image_remove


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Command(BaseCommand):
    help = "Campaign images: `build SPEC`, `ls`, `rm KEY`, `prune [--keep KEY…]`."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        build = sub.add_parser("build", help="build (or reuse) the image of a spec")
        build.add_argument(
            "spec", help="the image: value as YAML/JSON ('{apt: [python3-venv], pip: [pytest]}'), "
            "or @FILE to read it from a file",
        )  # fmt: skip
        build.add_argument("--quiet", action="store_true", help="do not print the build output")
        sub.add_parser("ls", help="list images")
        rm = sub.add_parser("rm", help="remove an image (key or a unique prefix)")
        rm.add_argument("key")
        rm.add_argument("--force", action="store_true", help="even if marked as building")
        prune = sub.add_parser(
            "prune", help="remove images no campaign, run or sandbox uses (and not --keep)"
        )
        prune.add_argument("--keep", action="append", default=[], metavar="KEY")

    def handle(self, *args, action, **options):
        try:
            return getattr(self, f"_{action}")(**options)
        except ConvoyError as exc:
            raise CommandError(exc.message) from exc

    def _build(self, *, spec, quiet, **_):
        text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CommandError(f"spec: not YAML: {exc}") from exc
        if isinstance(value, dict) and set(value) == {"image"}:
            value = value["image"]

        def show(line: str) -> None:
            sys.stderr.write(line + "\n")

        image = image_ensure(spec=value, actor=None, on_output=None if quiet else show)
        self.stdout.write(f"{image.key} {image.state} {_size(image.size_bytes)}")

    def _ls(self, **_):
        now = timezone.now()
        self.stdout.write(f"{'KEY':14}{'KIND':8}{'STATE':10}{'SIZE':>10}  {'AGE':>8}  SPEC")
        for image in images_list():
            age = now - image.created_at
            hours = age.total_seconds() / 3600
            age_text = f"{hours:.0f}h" if hours < 48 else f"{hours / 24:.0f}d"
            spec = {k: v for k, v in image.spec.items() if k != "kind"}
            self.stdout.write(
                f"{image.key[:12]:14}{image.kind:8}{image.state:10}"
                f"{_size(image.size_bytes):>10}  {age_text:>8}  {spec}"
            )

    def _rm(self, *, key, force, **_):
        image = image_get(key=key)
        image_remove(key=image.key, actor=None, force=force)
        self.stdout.write(f"removed {image.key}")

    def _prune(self, *, keep, **_):
        # Keeps what campaigns, runs and live sandboxes use (campaigns.environment) and --keep.
        removed = images_prune(actor=None, keep={image_get(key=k).key for k in keep})
        for key in removed:
            self.stdout.write(f"removed {key}")
        self.stdout.write(f"{len(removed)} image(s) removed")
