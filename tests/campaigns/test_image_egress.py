"""Image builds reach the network only through the egress proxy (issue 16): a pip step installs
from this host's package indexes through the proxy and each connection is an audit event of
the image; a run step that asks for a name outside the allow list fails the build with the
refusal in the build log; a build step has no direct network (the host's Redis is not there).

Real bubblewrap, real mmdebstrap against the host's apt sources, this process's real egress
proxy with the test-only name mapping (`forbidden.test`, `api.test` → 127.0.0.1).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from audit.models import AuditEvent
from campaigns.environment import run_image
from campaigns.states import RunFailed
from core.errors import Invalid
from sandboxes.egress.packages import apt_uris_read, package_index_rules, package_indexes_read
from sandboxes.egress.sandbox import ACTION_ALLOWED, ACTION_REFUSED
from sandboxes.egress.worker import egress_proxy_stop
from sandboxes.images.build import image_dir
from sandboxes.images.proxy_network import APT_PROXY_FILE
from sandboxes.images.services import image_ensure
from sandboxes.models import Image, ImageState
from tests.factories import campaign_make, run_make
from tests.sandboxes.images.conftest import host_index_addresses, short_data_dir


@pytest.fixture
def build_proxy(settings, monkeypatch):
    """A data directory of this test, and this process's proxy made afresh with the host's
    index ranges and the test-only names (stopped again after)."""
    settings.DATA_DIR = short_data_dir()
    settings.EGRESS_INDEX_ADDRESSES, reached = host_index_addresses()
    if not reached:
        pytest.skip("this host reaches none of its own package indexes (offline?)")
    monkeypatch.setenv("CONVOY_EGRESS_TEST_HOSTS", "api.test=127.0.0.1,forbidden.test=127.0.0.1")
    egress_proxy_stop()
    yield
    egress_proxy_stop()
    shutil.rmtree(settings.DATA_DIR, ignore_errors=True)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the allowed upstream\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    """A plain-HTTP service on 127.0.0.1 (reached by the build as `api.test:<port>`)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _events(image: Image, action: str) -> list[dict]:
    rows = AuditEvent.objects.filter(
        action=action, target_type="sandboxes.image", target_id=str(image.pk)
    )
    return [json.loads(body) for body in rows.values_list("body", flat=True)]


def test_pip_installs_through_the_proxy_and_its_connections_are_audited(db, build_proxy):
    image = image_ensure(
        spec={"apt": ["python3-venv"], "pip": ["six"],
              "run": ["/opt/convoy-venv/bin/python -c 'import six; print(six.__version__)'",
                      # apt in a step: its proxy comes from the file the build wrote
                      "env -u http_proxy -u HTTP_PROXY apt-get -q -o APT::Sandbox::User=root "
                      "update"]},
        actor=None,
    )  # fmt: skip
    assert image.state == ImageState.READY
    rootfs = image_dir(image.key) / "rootfs"
    assert list((rootfs / "opt/convoy-venv/lib").glob("python3*/site-packages/six.py"))
    allowed = _events(image, ACTION_ALLOWED)
    assert allowed, "no connection of the build was audited"
    assert not _events(image, ACTION_REFUSED)  # the index names are admitted at their ranges
    # The host's indexes, and the apt sources the base wrote into the image (which apt uses).
    image_apt = {urlsplit(u).hostname for u in apt_uris_read(rootfs / "etc/apt")}
    indexes = {rule.pattern for rule in package_index_rules(package_indexes_read())} | image_apt
    assert image_apt & {e["payload"]["host"] for e in allowed}, "apt did not use the proxy"
    for event in allowed:
        payload = event["payload"]
        assert payload["image_key"] == image.key and payload["host"] in indexes
        assert payload["sandbox"].startswith(f"image-{image.key[:16]}-")
        assert event["outcome"] == "success" and event["actor"]["type"] == "agent"
    # The steps ran with the proxy in their environment and apt configured for it.
    log = Path(image.build_log_path).read_text()
    assert "convoy-egress" in log and "--share-net" not in log
    assert "127.0.0.1:3128" in (rootfs / APT_PROXY_FILE.lstrip("/")).read_text()


def test_a_run_step_reaching_a_name_not_allowed_fails_the_build(db, build_proxy, upstream, manager):
    """The campaign's allow list applies to the build it triggers: `api.test:<port>` is
    reached; `forbidden.test` is refused and the build (and the run) fail with the reason."""
    spec = {
        "image": {
            "apt": ["curl"],
            "run": [
                f"curl -fsS http://api.test:{upstream}/ > /allowed.txt",
                "curl -fsS https://forbidden.test/",
            ],
        },
        "network": {"allow": [f"api.test:{upstream}"], "package_indexes": False},
    }
    campaign = campaign_make(owner=manager)
    run = run_make(campaign=campaign)
    with pytest.raises(RunFailed) as exc:
        run_image(run=run, spec=spec, actor=manager)
    assert "image.run[1]" in str(exc.value)
    image = Image.objects.get()
    assert image.state == ImageState.FAILED and image.error_field == "image.run[1]"
    assert "egress refused: forbidden.test:443 (not in network.allow)" in image.error
    log = Path(image.build_log_path).read_text()
    assert "egress refused: forbidden.test:443 (not in network.allow)" in log
    assert "hello from the allowed upstream" not in log  # it went to /allowed.txt
    refused = _events(image, ACTION_REFUSED)
    assert [e["payload"]["host"] for e in refused] == ["forbidden.test"]
    assert refused[0]["context"] == {"campaign_id": campaign.pk, "run_id": run.pk}
    assert refused[0]["actor"]["on_behalf_of"] == manager.get_username()
    reached = [e["payload"] for e in _events(image, ACTION_ALLOWED)]
    assert [(p["host"], p["port"], p["status"]) for p in reached] == [("api.test", upstream, 200)]


def test_a_build_step_has_no_direct_network(db, build_proxy):
    """Direct TCP to the host's Redis fails in a build step (its own loopback only), and the
    proxy refuses the address too: the build fails at the second step with the reason."""
    redis_port = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).port or 6379
    socket.create_connection(("127.0.0.1", redis_port), timeout=5).close()  # open on the host
    direct = (
        f"if curl -sS --noproxy '*' --max-time 5 telnet://127.0.0.1:{redis_port} </dev/null; "
        "then echo DIRECT-OPEN; exit 1; else echo DIRECT-BLOCKED; fi; "
        # The proxy's socket directory takes no files (they landed on the host's disk).
        "if touch /convoy/egress/planted; then echo EGRESS-DIR-WRITABLE; exit 1; fi"
    )
    # The build's NO_PROXY names 127.0.0.1: ask the proxy explicitly.
    proxy = "--noproxy '' --proxy http://127.0.0.1:3128"
    proxied = f"curl -fsS {proxy} http://127.0.0.1:{redis_port}/"
    with pytest.raises(Invalid) as exc:
        image_ensure(spec={"apt": ["curl"], "run": [direct, proxied]}, actor=None)
    assert exc.value.field == "image.run[1]"
    assert f"egress refused: 127.0.0.1:{redis_port} (loopback)" in exc.value.message
    log = Path(Image.objects.get().build_log_path).read_text().splitlines()
    assert "DIRECT-BLOCKED" in log and "DIRECT-OPEN" not in log
    assert "EGRESS-DIR-WRITABLE" not in log
    assert any("Failed to connect to 127.0.0.1" in line for line in log)
