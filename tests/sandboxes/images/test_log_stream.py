"""An image's build log follows the build: the page polls with its byte offset and gets only the
lines written since, and stops polling once the image is ready or failed."""

import html
import re

import pytest
from django.urls import reverse

from sandboxes.images.build import BuildLog, image_log_path
from sandboxes.models import Image, ImageState

pytestmark = pytest.mark.shapes("embedded", "production")

KEY = "e" * 64


@pytest.fixture
def building(db, settings, tmp_path):
    """An image in state building whose log the build is writing (as image_build writes it)."""
    settings.DATA_DIR = tmp_path
    log = BuildLog(image_log_path(KEY), None)
    image = Image.objects.create(
        key=KEY,
        kind="debian",
        spec={"base": "debian:bookworm"},
        state=ImageState.BUILDING,
        build_log_path=str(log.path),
    )
    yield image, log
    log.close()


def _poll(client, offset, **extra) -> tuple[int, str]:
    url = reverse("image-log", args=[KEY])
    response = client.get(url, {"offset": offset}, headers={"HX-Request": "true"}, **extra)
    return response.status_code, response.content.decode()


def _next_offset(page: str) -> int:
    return int(re.search(r'data-offset="(\d+)"', page).group(1))


def test_the_log_page_follows_a_build_until_it_is_ready(client, manager, building):
    image, log = building
    client.force_login(manager)
    log.line("$ mmdebstrap bookworm")
    log.line("<b>Get:1</b> bookworm InRelease")

    page = client.get(reverse("image-log", args=[KEY])).content.decode()
    assert "&lt;b&gt;Get:1&lt;/b&gt; bookworm InRelease" in page  # escaped: untrusted output
    assert 'hx-trigger="every 2s"' in page
    offset = _next_offset(page)

    status, update = _poll(client, offset)
    assert status == 200 and "Get:1" not in update  # nothing new yet
    assert _next_offset(update) == offset and 'hx-trigger="every 2s"' in update

    log.line("Unpacking python3 ...")
    with open(log.path, "a") as f:  # a line still being written waits for its end
        f.write("Setting up pyth")
    status, update = _poll(client, offset)
    assert status == 200
    assert 'hx-swap-oob="beforeend:#image-log-text"' in update
    assert "Unpacking python3 ...\n" in update and "mmdebstrap" not in update
    assert "Setting up" not in update
    offset = _next_offset(update)

    with open(log.path, "a") as f:
        f.write("on3 (3.11)\n")
    Image.objects.filter(pk=image.pk).update(state=ImageState.READY)
    status, update = _poll(client, offset)
    assert html.unescape(update).count("Setting up python3 (3.11)\n") == 1
    assert "Unpacking" not in update
    assert "ready" in update and "hx-get" not in update and "hx-trigger" not in update


def test_a_poll_from_the_start_gets_the_whole_log(client, admin_user, building):
    _, log = building
    client.force_login(admin_user)
    log.line("first")
    log.line("second")
    status, update = _poll(client, 0)
    assert status == 200 and "first\nsecond\n" in update
    assert _next_offset(update) == len("first\nsecond\n")


def test_a_failed_build_stops_polling(client, manager, building):
    image, log = building
    client.force_login(manager)
    log.line("image build failed: image.apt: no package nosuch")
    Image.objects.filter(pk=image.pk).update(state=ImageState.FAILED)
    page = client.get(reverse("image-log", args=[KEY])).content.decode()
    assert "image.apt: no package nosuch" in page
    assert "failed" in page and "hx-trigger" not in page


@pytest.mark.parametrize("offset", ["-1", "abc", "1.5", "", "\u00b2", "999999"])
def test_a_bad_offset_is_refused_naming_the_field(client, manager, building, offset):
    _, log = building
    client.force_login(manager)
    log.line("hello")
    status, body = _poll(client, offset)
    assert 400 <= status < 500 and "offset" in body


def test_people_who_may_not_see_images_cannot_read_the_log(client, reviewer, outsider, building):
    for user in (reviewer, outsider):
        client.force_login(user)
        assert _poll(client, 0)[0] in (403, 404)
        assert client.get(reverse("image-log", args=[KEY])).status_code in (403, 404)
