"""Fixtures shared by the review tests."""

import threading
from http.server import ThreadingHTTPServer

import pytest

from tests.review.test_codehost_github import FakeGitHub, _handler


@pytest.fixture
def fake_github():
    """A fake GitHub API on a local port, speaking real HTTP (tests.review.test_codehost_github)."""
    fake = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
