"""Huge changes do not render whole: the compare page draws the first files, offers more and
the whole patch as a download; huge log lines are cut into bounded pieces."""

import time

import pytest

from review.diffs import FILES_SHOWN
from sandboxes.loglines import LINE_MAX_CHARS, _split_long
from tests.factories import campaign_make, run_make, variant_make

pytestmark = pytest.mark.shapes("embedded", "production")


def _patch(files: int, *, tag: str = "new") -> bytes:
    return "".join(
        f"diff --git a/d/f{i}.py b/d/f{i}.py\nindex 1111111..2222222 100644\n"
        f"--- a/d/f{i}.py\n+++ b/d/f{i}.py\n@@ -1 +1 @@\n-old {i}\n+{tag} {i}\n"
        for i in range(files)
    ).encode()


def test_a_change_with_15000_files_draws_a_bounded_page(client, manager, reviewer):
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign)
    patch = _patch(15_000)
    a = variant_make(run=run, name="a", patch=patch)
    variant_make(run=run, name="b", patch=_patch(15_000, tag="other"), position=1)
    client.force_login(reviewer)
    url = f"/campaigns/{campaign.pk}/runs/{run.pk}/compare/"
    started = time.monotonic()
    page = client.get(url, {"variant": a.pk})
    elapsed = time.monotonic() - started
    html = page.content.decode()
    assert page.status_code == 200
    assert len(page.content) < 1_500_000, len(page.content)  # it was 12.6 MB and 17 s
    assert elapsed < 10
    assert f"Showing {FILES_SHOWN} of 15000 files" in html
    assert "d/f199.py" in html and "d/f200.py" not in html
    more = client.get(url, {"variant": a.pk, "files": 2 * FILES_SHOWN}).content.decode()
    assert "d/f399.py" in more and "d/f400.py" not in more
    download = client.get(f"/campaigns/{campaign.pk}/runs/{run.pk}/variants/{a.pk}/patch/")
    assert download.status_code == 200 and download.content == patch
    assert "attachment" in download["Content-Disposition"]
    compared = client.get(url, {"variant": a.pk, "a": a.pk, "b": a.pk + 1})
    assert compared.status_code == 200 and len(compared.content) < 3_000_000


def test_the_patch_download_is_for_people_who_may_see_the_run(client, manager, outsider):
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign)
    a = variant_make(run=run, name="a", patch=_patch(1))
    client.force_login(outsider)
    url = f"/campaigns/{campaign.pk}/runs/{run.pk}/variants/{a.pk}/patch/"
    assert client.get(url).status_code == 404


def test_a_50_megabyte_log_line_is_cut_into_bounded_pieces():
    pieces = _split_long("x" * (50 * 1024 * 1024))
    assert max(len(p) for p in pieces) == LINE_MAX_CHARS
    assert sum(len(p) for p in pieces) == 50 * 1024 * 1024
