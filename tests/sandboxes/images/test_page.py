"""The Images page: who sees it, who may remove and prune (after a confirmation), audited."""

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from campaigns.models import RepoRun, RunState
from sandboxes.images.build import image_dir
from sandboxes.models import Image, ImageState
from tests.factories import campaign_make, run_make

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def two_images(db, settings, tmp_path, manager):
    """One image a running campaign's run uses, one nobody uses (files on disk for both)."""
    settings.DATA_DIR = tmp_path
    used, unused = "c" * 64, "d" * 64
    for key in (used, unused):
        Image.objects.create(
            key=key,
            kind="debian",
            spec={"base": "debian:bookworm", "apt": ["python3-venv"], "pip": ["<b>x</b>"]},
            state=ImageState.READY,
            size_bytes=1234567,
        )
        (image_dir(key) / "rootfs").mkdir(parents=True)
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign, state=RunState.RUNNING)
    RepoRun.objects.filter(pk=run.pk).update(image_key=used)
    return {"used": used, "unused": unused, "campaign": campaign}


def test_managers_see_images_and_their_campaigns_but_cannot_remove(client, manager, two_images):
    client.force_login(manager)
    page = client.get(reverse("images")).content.decode()
    assert page.count('data-testid="image-row"') == 2
    assert two_images["campaign"].name in page and "1.2\xa0MB" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page  # a manager's spec, escaped
    assert 'data-testid="image-remove"' not in page and 'data-testid="prune-link"' not in page
    url = reverse("image-remove", args=[two_images["unused"]])
    assert client.post(url).status_code == 403
    assert Image.objects.count() == 2


def test_outsiders_and_reviewers_are_refused(client, reviewer, two_images):
    client.force_login(reviewer)
    assert client.get(reverse("images")).status_code == 403


def test_admin_removes_an_unused_image_after_confirming(client, admin_user, two_images):
    client.force_login(admin_user)
    unused, used = two_images["unused"], two_images["used"]
    page = client.get(reverse("images")).content.decode()
    assert page.count('data-testid="image-remove"') == 1  # only the unused one
    confirm = client.get(reverse("image-remove", args=[unused]))
    assert b'data-testid="confirm-remove"' in confirm.content
    assert Image.objects.filter(key=unused).exists()  # a GET removes nothing
    assert client.post(reverse("image-remove", args=[unused])).status_code == 302
    assert not Image.objects.filter(key=unused).exists() and not image_dir(unused).exists()
    event = AuditEvent.objects.get(action="sandbox.image.removed")
    assert event.actor_id == str(admin_user.pk)
    # The image in use is refused, even by a hand-made POST.
    assert client.post(reverse("image-remove", args=[used])).status_code == 409
    assert image_dir(used).exists()


def test_admin_prunes_what_no_one_uses(client, admin_user, two_images):
    client.force_login(admin_user)
    confirm = client.get(reverse("images-prune")).content.decode()
    assert two_images["unused"][:12] in confirm and two_images["used"][:12] not in confirm
    assert client.post(reverse("images-prune")).status_code == 302
    assert list(Image.objects.values_list("key", flat=True)) == [two_images["used"]]
