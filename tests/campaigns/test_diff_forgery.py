"""A transform controls every byte its sandbox prints, the diff included: what reviewers see, what
the secret scan reads and what the diff limit counts come from the patch itself, read strictly on
the host, whatever the sandbox printed."""

import pytest
from django.urls import reverse

from campaigns.environment import diff_limit_check
from campaigns.models import RepoRun, SecretLeak, VariantState
from campaigns.pipeline import run_execute
from campaigns.secret_grants import secret_grant
from campaigns.secrets import secret_set
from campaigns.services import campaign_create, campaign_launch
from campaigns.states import RunFailed
from review.diffs import diff_view
from tests.factories import PASSWORD, git, repos_make

pytestmark = pytest.mark.shapes("embedded", "production")

MB = 1024 * 1024
VALUE = "tok-7Hq2/pW9x+Zr4u="

# Reads the marker out of the wrapper's command line, prints it with a file list naming another
# file and a `.py` change holding the secret as a binary hunk, and undoes the real edit.
FORGE = r"""
n=$(printf %s "$BASH_EXECUTION_STRING" | grep -o -- '--convoy-step-done-[0-9a-f]*--' | head -1)
printf 'print("token: %s")\n' "$API_TOKEN" >> test_calc.py
printf 'test_calc.py binary\n' > /tmp/attr
git -c core.attributesFile=/tmp/attr diff --binary --no-color HEAD > /tmp/p
git checkout -q -- .
printf '\n%s\n' "$n"
printf '1\t0\tREADME.md\n\n'
cat /tmp/p
"""

# No forging: the repository's own `.gitattributes` marks source files binary; a new file is
# a literal (the whole content), a changed one a delta.
GITATTRIBUTES = r"""
{marked}
printf 'print("token: %s")\n' "$API_TOKEN" >> test_calc.py
printf 'print("token: %s")\n' "$API_TOKEN" > leak.py
"""


def _spec(tag: str, script: str) -> str:
    body = "".join("    " + line + "\n" for line in script.strip().splitlines())
    return (
        f"name: forge-{tag}\nbackend: bwrap\nrepos: {{tag: {tag}}}\nsecrets: [API_TOKEN]\n"
        f"files:\n  s.sh: |\n{body}"
        'transform: {run: ". $CONVOY_FILES/s.sh"}\n'
    )


@pytest.mark.django_db(transaction=True)
def test_a_diff_record_the_step_prints_itself_is_not_taken(manager, admin_user):
    """The step printed the marker, a file list (README.md +1) and a patch; the page, the
    counts and publishing took them as the diff. Only what the wrapper prints after its own
    marker is the diff: here nothing, since the step undid its edit."""
    secret_set(name="API_TOKEN", value=VALUE, actor=admin_user)
    secret_grant(name="API_TOKEN", manager=manager, actor=admin_user)
    tag, _ = repos_make(1)
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=_spec(tag, FORGE)), actor=manager
    )
    run = RepoRun.objects.get(campaign=campaign)
    run_execute(run_id=run.pk)
    variant = run.variants.get()
    assert variant.state == VariantState.COMPLETED, variant.error
    assert bytes(variant.patch) == b""
    assert variant.diffstat == [] and variant.files_changed == 0 and variant.insertions == 0


@pytest.mark.parametrize(
    "marked",
    ["printf '*.py binary\\n' > .gitattributes", "printf '*.py -diff\\n' > .gitattributes"],
)
@pytest.mark.django_db(transaction=True)
def test_a_source_change_sent_as_binary_is_scanned_and_shown(
    client, manager, reviewer, admin_user, marked
):
    """The secret inside the base85 hunks was not found; the page said "binary file"; git
    apply applied them all the same."""
    script = GITATTRIBUTES.format(marked=marked)
    secret_set(name="API_TOKEN", value=VALUE, actor=admin_user)
    secret_grant(name="API_TOKEN", manager=manager, actor=admin_user)
    tag, _ = repos_make(1)
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=_spec(tag, script)), actor=manager
    )
    run = RepoRun.objects.get(campaign=campaign)
    run_execute(run_id=run.pk)
    variant = run.variants.get()
    assert variant.state == VariantState.COMPLETED, variant.error
    paths = {f["path"]: f for f in variant.diffstat}
    assert paths["test_calc.py"]["binary"] is True and paths["leak.py"]["binary"] is True
    assert SecretLeak.objects.filter(variant=variant, names=["API_TOKEN"]).exists()

    assert client.login(username=reviewer.username, password=PASSWORD)
    url = reverse("review-compare", args=[campaign.pk, run.pk])
    html = client.get(url, {"variant": variant.pk}).content.decode()
    assert 'data-testid="binary-text"' in html
    assert 'data-testid="diff-flagged"' in html and 'data-testid="approve-flagged"' in html
    assert "token: " in html  # leak.py, decoded, its secret masked
    assert VALUE not in html


def _zeros_patch(tmp_path, size: int) -> bytes:
    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", str(repo))
    (repo / "keep.txt").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (repo / "zeros.bin").write_bytes(b"\0" * size)
    git(repo, "add", "-A")
    return git(repo, "-c", "core.compression=9", "diff", "--cached", "--binary", "HEAD")


@pytest.mark.parametrize("header", [b"literal +", b"literal  ", b"literal 0"])
def test_a_binary_hunk_header_git_reads_loosely_is_not_counted_as_nothing(tmp_path, header):
    """git reads the size with strtoul (`literal +50000000` applies); the old count needed
    exactly `literal <digits>` and counted such a hunk as 0 bytes."""
    size = 50 * MB
    patch = _zeros_patch(tmp_path, size).replace(b"literal %d" % size, header + b"%d" % size, 1)
    assert len(patch) < MB
    with pytest.raises(RunFailed, match=r"over limits\.max_diff_mb|could not be read"):
        diff_limit_check({"diff": {"max_mb": 5}}, patch, False)


def test_a_text_patch_after_a_binary_one_in_the_same_section_is_refused(tmp_path):
    """git apply reads a `---`/`+++` pair after a binary patch as another file's patch; the
    review page hid it (and renamed the binary file)."""
    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", str(repo))
    (repo / "calc.py").write_text("a\n")
    (repo / "data.bin").write_bytes(b"\0\1\2")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (repo / "data.bin").write_bytes(b"\0\3")
    git(repo, "add", "-A")
    binary = git(repo, "diff", "--cached", "--binary", "HEAD")
    git(repo, "reset", "-q", "--hard")
    patch = binary + b"--- a/calc.py\n+++ b/calc.py\n@@ -1 +1 @@\n-a\n+import os\n"
    (tmp_path / "p").write_bytes(patch)
    git(repo, "apply", "--binary", str(tmp_path / "p"))  # git applies both
    assert (repo / "calc.py").read_text() == "import os\n"
    with pytest.raises(RunFailed, match="the diff could not be read"):
        diff_limit_check({"diff": {"max_mb": 5}}, patch, False)
    views = diff_view(patch)  # a patch stored before this check: the page shows both
    assert [v.path for v in views] == ["data.bin", "calc.py"]
    assert views.unreadable
