"""Parsing, hashing, normalising and rendering diffs (campaigns/diffs.py)."""

import subprocess

import pytest
from django.template.loader import render_to_string

from review.diffs import (
    diff_changes,
    diff_compare,
    diff_group_key,
    diff_hash,
    diff_normalise,
    diff_parse,
    diff_stat,
    diff_view,
)
from review.groups import change_difference, change_files, change_summary, near_identical

pytestmark = pytest.mark.shapes("embedded", "production")

ALPHA = """\
diff --git a/tests/test_core.py b/tests/test_core.py
index 3b18e51..a9c4f2d 100644
--- a/tests/test_core.py
+++ b/tests/test_core.py
@@ -10,6 +10,6 @@ class CoreTest(unittest.TestCase):
     def test_add(self):
         x = 1
-        self.assertEquals(add(1, 2), 3)
+        self.assertEqual(add(1, 2), 3)

     def test_sub(self):
         pass
"""

# The same change in another repository: other blob ids, other line numbers and context name.
BETA = ALPHA.replace("3b18e51..a9c4f2d", "77aa001..0f0f0f0").replace(
    "@@ -10,6 +10,6 @@ class CoreTest", "@@ -42,6 +42,6 @@ class OtherTest"
)

DIFFERENT = ALPHA.replace("assertEqual(add(1, 2), 3)", "assertEqual(3, add(1, 2))")


def test_parse_gives_files_hunks_and_line_numbers():
    (f,) = diff_parse(ALPHA)
    assert f.path == "tests/test_core.py"
    assert f.status == "modified"
    assert (f.added, f.removed) == (1, 1)
    (hunk,) = f.hunks
    deleted = next(line for line in hunk.lines if line.kind == "del")
    added = next(line for line in hunk.lines if line.kind == "add")
    assert deleted.old_no == 12 and added.new_no == 12
    assert "assertEquals" in deleted.text


def _git(cwd, *args):
    return subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    ).stdout


def test_real_git_diff_with_binary_added_deleted_and_renamed_files(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "keep.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "gone.txt").write_text("bye\n")
    (tmp_path / "old name.txt").write_text("same content here\n" * 5)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "base")
    (tmp_path / "keep.txt").write_text("one\n2\nthree\n")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "old name.txt").rename(tmp_path / "new name.txt")
    (tmp_path / "logo.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    _git(tmp_path, "add", "-A")
    raw = _git(tmp_path, "diff", "--cached", "--binary", "-M", "HEAD")

    files = {f.path: f for f in diff_parse(raw)}
    assert files["keep.txt"].status == "modified"
    assert (files["keep.txt"].added, files["keep.txt"].removed) == (1, 1)
    assert files["gone.txt"].status == "deleted"
    assert files["new name.txt"].status == "renamed"
    assert files["new name.txt"].old_path == "old name.txt"
    assert files["logo.bin"].binary and files["logo.bin"].status == "added"
    assert files["latin.txt"].added == 1  # not UTF-8, still parsed
    stat = diff_stat(raw)
    assert stat.files == 5
    assert stat.added == 2 and stat.removed == 2
    # The hash is of the exact bytes; the group key survives non-UTF-8 content.
    assert diff_hash(raw) == diff_hash(raw) and len(diff_hash(raw)) == 64
    assert diff_group_key(raw)


def test_normalisation_groups_the_same_change_from_different_repositories():
    assert diff_hash(ALPHA) != diff_hash(BETA)
    assert diff_group_key(ALPHA) == diff_group_key(BETA)
    assert diff_group_key(ALPHA) != diff_group_key(DIFFERENT)
    assert "index " not in diff_normalise(ALPHA)
    assert "@@ -10" not in diff_normalise(ALPHA)
    assert diff_group_key("") == ""


def test_unified_and_split_views_pair_removed_with_added_lines():
    (unified,) = diff_view(ALPHA, mode="unified")
    kinds = [row.kind for row in unified.rows]
    assert kinds.count("add") == 1 and kinds.count("del") == 1 and kinds[0] == "hunk"
    (split,) = diff_view(ALPHA, mode="split")
    paired = [r for r in split.rows if r.left_kind == "del"]
    assert len(paired) == 1 and paired[0].right_kind == "add"
    assert "assertEquals" in str(paired[0].left_html)
    assert "hl-" in str(paired[0].right_html)  # Pygments highlighted the Python


def test_whitespace_toggle_hides_whitespace_only_changes():
    ws = ALPHA.replace("-        self.assertEquals(add(1, 2), 3)", "-        x  =  1").replace(
        "+        self.assertEqual(add(1, 2), 3)", "+        x = 1"
    )
    (shown,) = diff_view(ws, whitespace=True)
    (hidden,) = diff_view(ws, whitespace=False)
    assert any(r.kind == "del" for r in shown.rows)
    assert not any(r.kind in ("del", "add") for r in hidden.rows)


def test_large_files_start_collapsed_unless_expanded():
    body = "".join(f"+line {i}\n" for i in range(50))
    big = (
        "diff --git a/big.txt b/big.txt\nnew file mode 100644\n--- /dev/null\n"
        f"+++ b/big.txt\n@@ -0,0 +1,50 @@\n{body}"
    )
    (view,) = diff_view(big, collapse_over=10)
    assert view.collapsed and view.rows == [] and view.added == 50
    (view,) = diff_view(big, collapse_over=10, expand="big.txt")
    assert not view.collapsed and len(view.rows) == 51


def test_compare_two_variants_names_what_differs():
    extra = ALPHA + (
        "diff --git a/README b/README\nindex 1..2 100644\n--- a/README\n+++ b/README\n"
        "@@ -1 +1 @@\n-old\n+new\n"
    )
    result = {c.path: c for c in diff_compare(ALPHA, extra)}
    assert result["tests/test_core.py"].outcome == "same"
    assert result["README"].outcome == "only_b"
    result = {c.path: c for c in diff_compare(ALPHA, DIFFERENT)}
    different = result["tests/test_core.py"]
    assert different.outcome == "different"
    text = " ".join(str(r.html) for r in different.rows)
    assert "assertEqual(3, add(1, 2))" in text


XSS = """\
diff --git a/page.html b/page.html
index 1..2 100644
--- a/page.html
+++ b/page.html
@@ -1 +1 @@ <img src=x onerror=alert(1)>
-<b>old</b>
+<script>alert("pwned")</script>
"""


@pytest.mark.parametrize("mode", ["unified", "split"])
def test_diffs_containing_html_render_as_text(mode):
    html = render_to_string(
        "review/diff.html#diff-viewer",
        {"files": diff_view(XSS, mode=mode), "mode": mode},
    )
    assert "<script>" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;" in html or "&lt;</span><span" in html
    cmp_html = render_to_string(
        "review/diff.html#compare",
        {"comparison": diff_compare(XSS, ALPHA)},
    )
    assert "<script>" not in cmp_html


def _with_context(before: str, after: str, *, start: int, context: tuple[str, str]) -> str:
    """One edited line between two context lines, as git prints it in some repository."""
    return (
        "diff --git a/app/conf.py b/app/conf.py\n"
        f"index {start:07d}..{start + 1:07d} 100644\n--- a/app/conf.py\n+++ b/app/conf.py\n"
        f"@@ -{start},3 +{start},3 @@ def section_{start}():\n"
        f" {context[0]}\n-{before}\n+{after}\n {context[1]}\n"
    )


def test_the_group_key_ignores_context_and_line_numbers_but_not_the_change():
    one = _with_context("TIMEOUT = 10", "TIMEOUT = 30", start=3, context=("# a", "DEBUG = 1"))
    two = _with_context("TIMEOUT = 10", "TIMEOUT = 30", start=90, context=("x = 2", "y = 3"))
    assert diff_group_key(one) == diff_group_key(two)
    other = _with_context("TIMEOUT = 10", "TIMEOUT = 60", start=3, context=("# a", "DEBUG = 1"))
    assert diff_group_key(other) != diff_group_key(one)
    # The same lines in another file, or the file's mode changing too, is another change.
    moved = one.replace("app/conf.py", "app/settings.py")
    assert diff_group_key(moved) != diff_group_key(one)
    assert diff_changes(one) == [["app/conf.py", "modified", ["-TIMEOUT = 10", "+TIMEOUT = 30"]]]


def test_changes_that_differ_only_in_bytes_that_are_not_utf8_are_not_grouped():
    """A Latin-1 file's `é` (0xE9) and `ÿ` (0xFF) both decoded to U+FFFD, so two different
    changes shared a group key and were approved together as the same change."""
    head = b"diff --git a/s.py b/s.py\n--- a/s.py\n+++ b/s.py\n@@ -1 +1 @@\n-s = 'a'\n+s = '"
    assert diff_group_key(head + b"\xe9'\n") != diff_group_key(head + b"\xff'\n")
    assert diff_group_key(head + b"\xe9'\n") == diff_group_key(head + b"\xe9'\n")


def test_labels_and_near_identical_changes():
    base = [["app/conf.py", "modified", ["-TIMEOUT = 10", "+TIMEOUT = 30", "+RETRIES = 3"]]]
    near = [["app/conf.py", "modified", ["-TIMEOUT = 10", "+TIMEOUT = 30", "+RETRIES = 5"]]]
    far = [["app/other.py", "modified", ["-TIMEOUT = 10", "+TIMEOUT = 30", "+RETRIES = 3"]]]
    assert change_summary(base) == "conf.py: “TIMEOUT = 10” → “TIMEOUT = 30” (+2 \u22121 in 1 file)"
    assert change_files(base) == ["app/conf.py"]
    assert near_identical(base, near) == 2  # one line out, one line in
    assert near_identical(base, far) is None  # other files: not the same change
    assert near_identical(base, base) is None  # identical is one group, not "near"
    assert change_difference(base, near) == {("app/conf.py", "+RETRIES = 3")}
    # The page marks exactly those lines in the shown group's diff.
    patch = (
        "diff --git a/app/conf.py b/app/conf.py\n--- a/app/conf.py\n+++ b/app/conf.py\n"
        "@@ -1,1 +1,2 @@\n-TIMEOUT = 10\n+TIMEOUT = 30\n+RETRIES = 3\n"
    )
    (view,) = diff_view(patch, differing=change_difference(base, near))
    marked = [r for r in view.rows if r.differs]
    assert len(marked) == 1 and "RETRIES" in marked[0].html
