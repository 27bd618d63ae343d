"""The egress events of an image build (`sandboxes.images.proxy_network`): a build that floods
the proxy with refusals gets them collapsed per target, as a sandbox does, and the events a
build keeps until its step ends are bounded (the rest are counted and recorded as a count).

A real egress proxy on a UNIX socket and a real database; nothing leaves this machine (the
refused targets are loopback and a name the policy does not allow)."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.models import AuditEvent
from sandboxes.egress.events import EgressEvent
from sandboxes.egress.policy import network_parse
from sandboxes.egress.proxy import EgressProxy
from sandboxes.egress.sandbox import ACTION_ALLOWED, ACTION_REFUSED, ACTION_UNRECORDED
from sandboxes.egress.wire import UpstreamConfig
from sandboxes.images.proxy_network import _BuildTrail
from sandboxes.models import Image

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db]

KEY = "b" * 64


@pytest.fixture
def proxy() -> Iterator[EgressProxy]:
    root = Path(tempfile.mkdtemp(prefix="eg-", dir="/tmp"))  # socket paths are short
    p = EgressProxy(root, upstream=UpstreamConfig()).start()
    yield p
    p.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def image(db) -> Image:
    return Image.objects.create(key=KEY, kind="debian", spec={})


def _events(image: Image, action: str) -> list[dict]:
    rows = AuditEvent.objects.filter(
        action=action, target_type="sandboxes.image", target_id=str(image.pk)
    )
    return [json.loads(body) for body in rows.order_by("pk").values_list("body", flat=True)]


def _flood(path: Path, target: str, count: int) -> None:
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        while s.recv(65536):
            pass
        s.close()


def test_a_builds_flood_of_refusals_is_collapsed_per_target(proxy, image):
    """A build step refused thousands of times a second wrote an audit event and a build log
    line for each, all held in memory until the step ended."""
    trail = _BuildTrail(KEY, None, {"campaign_id": 7})
    policy = network_parse("none")
    path = proxy.sandbox_open("image-bbbb-1", policy, on_event=trail.add)
    _flood(path, "127.0.0.1:5432", 300)
    _flood(path, "other.test:443", 10)
    proxy.sandbox_open("image-bbbb-1", policy, on_event=trail.add)  # a round trip: all reported
    lines = trail.record()

    refused = _events(image, ACTION_REFUSED)
    assert len(refused) < 60  # was 310
    assert sum(e["payload"].get("count", 1) for e in refused) == 310
    first = refused[0]
    assert (first["payload"]["host"], first["reason"]) == ("127.0.0.1", "loopback")
    (loopback,) = [e for e in refused if e["payload"].get("count") and e["payload"]["port"] == 5432]
    payload = loopback["payload"]
    assert (payload["host"], payload["code"], payload["image_key"]) == ("127.0.0.1", "address", KEY)
    assert loopback["reason"].startswith(f"{payload['count']} more refusals of 127.0.0.1:5432 in ")
    assert loopback["outcome"] == "denied" and loopback["context"] == {"campaign_id": 7}
    assert len(lines) == len(refused)
    assert lines[0] == "egress refused: 127.0.0.1:5432 (loopback)"
    assert f"egress: {loopback['reason']}" in lines


def test_the_events_a_build_keeps_between_steps_are_bounded_and_the_rest_counted(image):
    trail = _BuildTrail(KEY, None, {}, maxsize=10)
    for i in range(50):
        trail.add(
            EgressEvent(
                sandbox_key="image-bbbb-1",
                method="CONNECT",
                host="pypi.test",
                port=443,
                allowed=True,
                code="ok",
                status=200,
                started_at=1000.0 + i,
            )
        )
    lines = trail.record()

    assert len(_events(image, ACTION_ALLOWED)) == 10
    (unrecorded,) = _events(image, ACTION_UNRECORDED)
    payload = unrecorded["payload"]
    assert (payload["count"], payload["refused"], payload["hosts"]) == (40, 0, ["pypi.test"])
    assert (payload["first_at"], payload["last_at"], payload["image_key"]) == (1010.0, 1049.0, KEY)
    assert unrecorded["reason"] == (
        "40 egress events (0 refused) not recorded one by one: more than 10 in one build step"
    )
    assert lines == [f"egress: {unrecorded['reason']}"]
    assert trail.record() == []  # counted once
