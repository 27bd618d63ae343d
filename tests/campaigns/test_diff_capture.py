"""What a variant's diff may not hide or inflate: binary files count at their full size against
`limits.max_diff_mb`, and a transform cannot turn its source changes into opaque binary hunks."""

import subprocess
from pathlib import Path

import pytest

from campaigns.environment import binary_patch_bytes, diff_limit_check, diff_read
from campaigns.models import RepoRun, VariantState
from campaigns.pipeline import run_execute
from campaigns.services import campaign_create, campaign_launch
from campaigns.states import RunFailed
from tests.factories import repos_make

MB = 1024 * 1024


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    ).stdout


def test_a_binary_file_counts_at_its_full_size_not_its_compressed_one(tmp_path):
    """20 MB of zeros is a 20 KB patch; publishing inflated it all on the host, so a patch
    within the limit could carry gigabytes."""
    repo = tmp_path / "r"
    _git(tmp_path, "init", "-q", str(repo))
    (repo / "keep.txt").write_text("x\n")
    (repo / "big.bin").write_bytes(b"\0" * 4 * MB)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    (repo / "zeros.bin").write_bytes(b"\0" * 20 * MB)  # a literal
    with (repo / "big.bin").open("r+b") as big:  # a delta against the old content
        big.seek(0, 2)
        big.write(b"\1" * MB)
    _git(repo, "add", "-A")
    patch = _git(repo, "-c", "core.compression=9", "diff", "--cached", "--binary", "HEAD")
    assert len(patch) < MB  # what the old check looked at
    assert binary_patch_bytes(patch) >= 25 * MB
    with pytest.raises(RunFailed, match=r"over limits\.max_diff_mb"):
        diff_limit_check({"diff": {"max_mb": 5}}, patch, False)
    diff_limit_check({"diff": {"max_mb": 30}}, patch, False)


SPEC = """\
name: hides-{tag}
backend: bwrap
repos: {{tag: {tag}}}
transform: {{run: "{run}"}}
"""


@pytest.mark.django_db(transaction=True)
def test_a_transform_cannot_make_its_source_changes_opaque_binary(manager):
    """`.git/info/attributes` (never part of the diff) marking `*.py binary`, or a tiny
    core.bigFileThreshold, turned the change into a binary hunk reviewers could not read,
    which the secret scan did not see and publishing applied."""
    tag, _ = repos_make(1)
    run = (
        "printf '*.py binary\\\\n' > .git/info/attributes && "
        "git config core.bigFileThreshold 1 && "
        "sed -i 's/assertEquals(/assertEqual(/g' test_calc.py"
    )
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=SPEC.format(tag=tag, run=run)),
        actor=manager,
    )
    run_row = RepoRun.objects.get(campaign=campaign)
    assert run_execute(run_id=run_row.pk) == "succeeded"
    variant = run_row.variants.get()
    assert variant.state == VariantState.COMPLETED, variant.error
    patch = bytes(variant.patch)
    assert b"GIT binary patch" not in patch
    assert b"+        self.assertEqual(" in patch
    assert variant.insertions > 0


def test_the_strict_reading_agrees_with_git_on_everything_git_diff_prints(tmp_path):
    """Renames, mode changes, deletions, files without a final newline, CRLF, lines that look
    like headers, empty context lines, binary literals and deltas: read as git counts them."""
    repo = tmp_path / "r"
    _git(tmp_path, "init", "-q", str(repo))
    (repo / "keep.txt").write_text("one\n\ntwo\n--- a\n+++ b\nthree\n")
    (repo / "gone.txt").write_text("bye\n")
    (repo / "old name.txt").write_text("same content here\n" * 5)
    (repo / "run.sh").write_text("echo\n")
    (repo / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    (repo / "big.bin").write_bytes(bytes(range(256)) * 64)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    (repo / "keep.txt").write_text("one\n\n2\n--- a\n+++ c\nthree")
    (repo / "gone.txt").unlink()
    (repo / "old name.txt").rename(repo / "new name.txt")
    (repo / "run.sh").chmod(0o755)
    (repo / "crlf.txt").write_bytes(b"a\r\nc\r\n")
    (repo / "big.bin").write_bytes(bytes(range(256)) * 64 + b"\1\2")  # a delta
    (repo / "logo.bin").write_bytes(bytes(range(256)) * 4)  # a literal
    (repo / "caf\u00e9 \u202e.txt").write_text("x\n")  # a quoted name
    (repo / 'quo"te\\back.txt').write_text("q\n")  # quoted with \" and \\ escapes
    (repo / "tab\tname.txt").write_text("t\n")
    _git(repo, "add", "-A")
    patch = _git(repo, "diff", "--cached", "--binary", "-M", "HEAD")
    files = diff_read({"diff": {"max_mb": 5}}, patch)
    numstat = subprocess.run(
        ["git", "apply", "--numstat"], input=patch, capture_output=True, check=True, cwd=tmp_path
    ).stdout.decode()
    counted = sorted(
        (a == "-", 0 if a == "-" else int(a), 0 if d == "-" else int(d))
        for a, d, _ in (line.split("\t", 2) for line in numstat.splitlines())
    )
    assert sorted((f.binary, f.added, f.removed) for f in files) == counted
    by_path = {f.path: f for f in files}
    assert by_path["new name.txt"].status == "renamed"
    assert by_path["caf\u00e9 \u202e.txt"].status == "added"
    assert by_path['quo"te\\back.txt'].status == "added"
    assert by_path["tab\tname.txt"].status == "added"
    # With core.quotePath off, non-ASCII stays raw inside the quotes of a name git must quote.
    raw = _git(repo, "-c", "core.quotePath=false", "diff", "--cached", "--binary", "HEAD")
    paths = {f.path for f in diff_read({"diff": {"max_mb": 5}}, raw)}
    assert "caf\u00e9 \u202e.txt" in paths and "tab\tname.txt" in paths
    assert by_path["big.bin"].forward.kind == "delta"
    assert by_path["big.bin"].forward.result_size == 256 * 64 + 2
    assert by_path["logo.bin"].forward.data == bytes(range(256)) * 4


@pytest.mark.django_db(transaction=True)
def test_the_checkouts_git_settings_do_not_change_the_patchs_format(manager):
    """`diff.mnemonicPrefix` (`c/x i/x`), `diff.context=0` (hunks git apply refuses) or
    `diff.submodule=log` in the checkout's or the image's settings made a legitimate change
    unreadable, so its variant failed: the capture pins the format."""
    tag, _ = repos_make(1)
    run = (
        "git config diff.mnemonicPrefix true && git config diff.context 0 && "
        "git config diff.noprefix true && "
        "sed -i 's/assertEquals(/assertEqual(/g' test_calc.py"
    )
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=SPEC.format(tag=tag, run=run)),
        actor=manager,
    )
    run_row = RepoRun.objects.get(campaign=campaign)
    assert run_execute(run_id=run_row.pk) == "succeeded"
    variant = run_row.variants.get()
    assert variant.state == VariantState.COMPLETED, variant.error
    assert bytes(variant.patch).startswith(b"diff --git a/test_calc.py b/test_calc.py")
    assert b"\n@@ -" in bytes(variant.patch) and b"self.assertEqual(" in bytes(variant.patch)
