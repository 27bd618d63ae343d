"""The README's "Environments" examples, run as written (issue 16).

Each test takes its spec from README.md by its marker comment, points `repos:` at repositories
it generates (nothing else changes; the backend is the default or, for gVisor, one added line),
and runs it with the real worker: the image is built, setup installs into the tools area,
the codemod runs, validation passes, and the diff holds the codemod's change only.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
from django.conf import settings

from campaigns.models import Outcome, RepoRun, RunState, Validation, VariantState
from campaigns.services import campaign_create, campaign_launch, repositories_register
from tests.campaigns.test_egress_campaign import index_addresses  # noqa: F401 (a fixture)
from tests.factories import campaign_completed, git
from tests.support import ROOT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ENGINES = {"bwrap": "bwrap", "gvisor": "runsc"}

# A small library; `strict` repositories make pytest turn warnings into errors, so the
# deprecated assertEquals fails their baseline and the codemod fixes them.
SLUGKIT_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "slugkit"
version = "1.0.0"

[project.optional-dependencies]
test = ["pytest>=7"]

[tool.setuptools]
packages = ["slugkit"]
"""
STRICT_PYTEST = '\n[tool.pytest.ini_options]\nfilterwarnings = ["error"]\n'
SLUGKIT = """\
import re


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
"""
SLUGKIT_TEST = """\
import unittest

from slugkit import slugify


class SlugifyTest(unittest.TestCase):
    def test_words(self):
        self.assertEquals(slugify("Hello, World"), "hello-world")

    def test_blank(self):
        self.assertEqual(slugify("  "), "")
"""

# A package whose lockfile holds one dependency, a local one: `npm ci` needs no registry and
# still fills node_modules in the checkout.
BUFKIT_PACKAGE = {
    "name": "bufkit",
    "version": "1.0.0",
    "private": True,
    "scripts": {"test": "node --test"},
    "dependencies": {"hexdump": "file:vendor/hexdump"},
}
BUFKIT_LOCK = {
    "name": "bufkit",
    "version": "1.0.0",
    "lockfileVersion": 3,
    "requires": True,
    "packages": {
        "": {"name": "bufkit", "version": "1.0.0", "dependencies": BUFKIT_PACKAGE["dependencies"]},
        "node_modules/hexdump": {"resolved": "vendor/hexdump", "link": True},
        "vendor/hexdump": {"version": "1.0.0"},
    },
}
BUFKIT_FILES = {
    "package.json": json.dumps(BUFKIT_PACKAGE, indent=2) + "\n",
    "package-lock.json": json.dumps(BUFKIT_LOCK, indent=2) + "\n",
    "vendor/hexdump/package.json": '{"name": "hexdump", "version": "1.0.0", "main": "index.js"}\n',
    "vendor/hexdump/index.js": 'module.exports = (buf) => buf.toString("hex");\n',
    "lib/encode.js": (
        'const hexdump = require("hexdump");\n'
        'exports.toHex = (text) => hexdump(new Buffer(text, "utf8"));\n'
    ),
    "test/encode.test.js": (
        'const test = require("node:test");\n'
        'const assert = require("node:assert");\n'
        'const { toHex } = require("../lib/encode");\n'
        'test("hex of ascii", () => assert.strictEqual(toHex("hi"), "6869"));\n'
    ),
}


def readme_example(name: str) -> str:
    """The YAML block after `<!-- example: name -->` in README.md."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- example: {name} -->\n```yaml\n(.*?)```\n", text, re.DOTALL)
    assert found, f"README.md has no yaml block marked 'example: {name}'"
    return found.group(1)


def _aimed(spec: str, *, tag: str, backend: str) -> str:
    """The README spec with `repos:` on the generated repositories (and the backend, if not
    the default)."""
    lines = spec.splitlines()
    repos = [i for i, line in enumerate(lines) if line.startswith("repos:")]
    assert len(repos) == 1, spec
    lines[repos[0]] = f"repos: {{tag: {tag}}}"
    assert not any(line.startswith("backend:") for line in lines), spec
    if backend != settings.SANDBOX_BACKEND:
        lines.append(f"backend: {backend}")
    return "\n".join(lines) + "\n"


def _repos_make(tag: str, trees: dict[str, dict[str, str]]) -> dict[str, Path]:
    """One git repository per tree under the repository root, registered with `tag`."""
    paths = {}
    for name, files in trees.items():
        path = Path(settings.REPO_ROOTS[0]) / tag / name
        for rel, content in files.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(content)
        git(path, "init", "-q", "-b", "main")
        git(path, "add", "-A")
        git(path, "-c", "user.name=T", "-c", "user.email=t@x", "commit", "-qm", "Initial")
        paths[name] = path
    repositories_register(
        entries=[{"url": f"file://{p}", "ref": "main"} for p in paths.values()],
        tags=[tag],
        actor=None,
    )
    return paths


def _run_example(manager, name: str, *, tag: str, backend: str):
    if not shutil.which(ENGINES[backend]):
        pytest.skip(f"the {backend} engine is not installed here")
    spec = _aimed(readme_example(name), tag=tag, backend=backend)
    campaign = campaign_create(actor=manager, source=spec)
    campaign_launch(campaign=campaign, actor=manager)
    campaign_completed(campaign, timeout=1200)  # the first run builds the image
    runs = {r.repository.name: r for r in RepoRun.objects.filter(campaign=campaign)}
    assert {r.state for r in runs.values()} == {RunState.SUCCEEDED}, [
        (r.state, r.error) for r in runs.values()
    ]
    return runs


def _only_the_codemod(variant, path: str, removed: str, added: str) -> None:
    assert variant.state == VariantState.COMPLETED, variant.error
    assert [d["path"] for d in variant.diffstat] == [path], variant.diffstat
    assert f"-{removed}" in variant.diff and f"+{added}" in variant.diff, variant.diff
    for leftover in (".convoy-home", "venv", "egg-info", "__pycache__", "node_modules", ".npm"):
        assert leftover not in variant.diff, leftover


@pytest.mark.parametrize("backend", ["bwrap", "gvisor"])
def test_python_library_example(backend, index_addresses, celery_worker, manager):  # noqa: F811
    """Setup pip-installs the library and its test dependencies into a virtualenv under
    $HOME; the strict library's baseline fails on the deprecated call, so its variant *fixes*
    it; the other one *passes*."""
    library = {"slugkit/__init__.py": SLUGKIT, "tests/test_slugify.py": SLUGKIT_TEST}
    _repos_make(
        f"pyex{backend}",
        {
            "slugkit-strict": {**library, "pyproject.toml": SLUGKIT_PYPROJECT + STRICT_PYTEST},
            "slugkit-lenient": {**library, "pyproject.toml": SLUGKIT_PYPROJECT},
        },
    )
    runs = _run_example(manager, "python-library", tag=f"pyex{backend}", backend=backend)
    assert set(runs) == {"slugkit-strict", "slugkit-lenient"}
    for name, run in runs.items():
        variant = run.variants.get()
        _only_the_codemod(
            variant,
            "tests/test_slugify.py",
            '        self.assertEquals(slugify("Hello, World"), "hello-world")',
            '        self.assertEqual(slugify("Hello, World"), "hello-world")',
        )
        assert variant.validation == Validation.PASSED, variant.output_tail
        if name == "slugkit-strict":
            assert run.baseline == Validation.FAILED
            assert "DeprecationWarning" in run.baseline_error, run.baseline_error
            assert variant.outcome == Outcome.FIXES
        else:
            assert run.baseline == Validation.PASSED, run.baseline_error
            assert variant.outcome == Outcome.PASSES


@pytest.mark.parametrize("backend", ["bwrap", "gvisor"])
def test_javascript_package_example(backend, celery_worker, manager):
    """`npm ci` fills node_modules in setup, `npm test` runs node's test runner on the image's
    Node; the diff is the codemod's one line."""
    _repos_make(f"jsex{backend}", {"bufkit": BUFKIT_FILES})
    runs = _run_example(manager, "javascript-package", tag=f"jsex{backend}", backend=backend)
    variant = runs["bufkit"].variants.get()
    _only_the_codemod(
        variant,
        "lib/encode.js",
        'exports.toHex = (text) => hexdump(new Buffer(text, "utf8"));',
        'exports.toHex = (text) => hexdump(Buffer.from(text, "utf8"));',
    )
    assert runs["bufkit"].baseline == Validation.PASSED, runs["bufkit"].baseline_error
    assert variant.validation == Validation.PASSED, variant.output_tail
    assert variant.outcome == Outcome.PASSES
