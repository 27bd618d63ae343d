"""The GitHub adapter against a local fake of the GitHub REST endpoints it uses.

The real GitHub cannot be reached from tests, so a real HTTP server on 127.0.0.1 plays it:
pull requests, check runs, combined status, and scripted rate-limit answers.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from review.codehosts.base import ChecksState, CodeHostError
from review.codehosts.github import GitHub, github_repo_slug

pytestmark = pytest.mark.shapes("embedded", "production")


class FakeGitHub:
    """State of the fake: pull requests per repo, checks per ref, queued limit responses."""

    def __init__(self):
        self.pulls: dict[str, list[dict]] = {}
        self.check_runs: dict[str, list[dict]] = {}
        self.statuses: dict[str, tuple[str, list[dict]]] = {}
        self.limits: list[tuple[int, dict, dict]] = []  # (status, headers, body) served first
        self.requests: list[tuple[str, str, dict | None, str]] = []
        self.lock = threading.Lock()


def _handler(fake: FakeGitHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body, headers=None):
            raw = json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self, method):
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length)) if length else None
            with fake.lock:
                fake.requests.append(
                    (method, self.path, payload, self.headers.get("Authorization", ""))
                )
                if fake.limits:
                    status, headers, body = fake.limits.pop(0)
                    return self._send(status, body, headers)
            parts = self.path.split("?")[0].strip("/").split("/")
            repo = f"{parts[1]}/{parts[2]}"
            if parts[3] == "pulls" and len(parts) == 4 and method == "POST":
                pulls = fake.pulls.setdefault(repo, [])
                if any(p["head"]["ref"] == payload["head"] and p["state"] == "open" for p in pulls):
                    return self._send(422, {"message": "A pull request already exists"})
                pr = {
                    "number": len(pulls) + 1,
                    "html_url": f"https://github.example/{repo}/pull/{len(pulls) + 1}",
                    "state": "open",
                    "draft": payload.get("draft", False),
                    "merged": False,
                    "title": payload["title"],
                    "body": payload["body"],
                    "head": {"ref": payload["head"], "sha": "abc123"},
                }
                pulls.append(pr)
                return self._send(201, pr)
            if parts[3] == "pulls" and len(parts) == 4 and method == "GET":
                return self._send(
                    200, [p for p in fake.pulls.get(repo, []) if p["state"] == "open"]
                )
            if parts[3] == "pulls" and len(parts) == 5:
                pr = fake.pulls.get(repo, [])[int(parts[4]) - 1]
                if method == "PATCH":
                    pr.update(payload)
                return self._send(200, pr)
            if parts[3] == "commits" and parts[5] == "check-runs":
                runs = fake.check_runs.get(parts[4], [])
                return self._send(200, {"total_count": len(runs), "check_runs": runs})
            if parts[3] == "commits" and parts[5] == "status":
                state, statuses = fake.statuses.get(parts[4], ("pending", []))
                return self._send(200, {"state": state, "statuses": statuses})
            return self._send(404, {"message": "Not Found"})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def do_PATCH(self):
            self._handle("PATCH")

    return Handler


class Sleeps:
    """Records the waits the adapter asks for instead of sleeping them."""

    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds):
        self.calls.append(seconds)


def _adapter(fake, token, sleeps):
    return GitHub(api_url=fake.url, token=token, rate=1000, sleep=sleeps)


def test_fake_github_opens_then_updates_a_pull_request(fake_github):
    gh = _adapter(fake_github, "tok-open", Sleeps())
    pr = gh.pull_request_upsert(
        repo="acme/alpha", head="convoy/fix", base="main", title="Fix", body="first"
    )
    assert (pr.number, pr.state) == (1, "open")
    assert pr.url.endswith("/acme/alpha/pull/1")
    again = gh.pull_request_upsert(
        repo="acme/alpha", head="convoy/fix", base="main", title="Fix v2", body="second"
    )
    assert again.number == 1
    assert fake_github.pulls["acme/alpha"][0]["title"] == "Fix v2"
    assert len(fake_github.pulls["acme/alpha"]) == 1
    assert all(auth == "Bearer tok-open" for *_, auth in fake_github.requests)


def test_fake_github_pull_request_states_and_checks(fake_github):
    gh = _adapter(fake_github, "tok-state", Sleeps())
    gh.pull_request_upsert(repo="acme/beta", head="b", base="main", title="t", body="")
    fake_github.pulls["acme/beta"][0].update(state="closed", merged=True)
    assert gh.pull_request_get(repo="acme/beta", number=1).state == "merged"
    fake_github.pulls["acme/beta"][0].update(merged=False)
    assert gh.pull_request_get(repo="acme/beta", number=1).state == "closed"

    assert gh.checks_get(repo="acme/beta", ref="abc") == ChecksState.NONE
    fake_github.check_runs["abc"] = [{"status": "completed", "conclusion": "success"}]
    assert gh.checks_get(repo="acme/beta", ref="abc") == ChecksState.PASSING
    fake_github.check_runs["abc"].append({"status": "in_progress", "conclusion": None})
    assert gh.checks_get(repo="acme/beta", ref="abc") == ChecksState.PENDING
    fake_github.statuses["abc"] = ("failure", [{"state": "failure", "context": "ci"}])
    assert gh.checks_get(repo="acme/beta", ref="abc") == ChecksState.FAILING


def test_fake_github_retry_after_is_honoured_and_shared_across_adapters(fake_github):
    fake_github.limits.append(
        (403, {"Retry-After": "7"}, {"message": "You have exceeded a secondary rate limit"})
    )
    first_sleeps, second_sleeps = Sleeps(), Sleeps()
    first = _adapter(fake_github, "tok-shared", first_sleeps)
    pr = first.pull_request_upsert(repo="acme/g", head="h", base="main", title="t", body="")
    assert pr.number == 1
    assert len(fake_github.requests) == 2  # the limited call, then its retry
    assert first_sleeps.calls and first_sleeps.calls[0] == pytest.approx(7, abs=0.5)

    # Another campaign's adapter with the same host and credential waits out the same block.
    fake_github.limits.append((429, {"Retry-After": "30"}, {"message": "slow down"}))
    first.pull_request_get(repo="acme/g", number=1)
    second = _adapter(fake_github, "tok-shared", second_sleeps)
    second.pull_request_get(repo="acme/g", number=1)
    assert second_sleeps.calls and second_sleeps.calls[0] > 20

    # A different credential is not held back.
    other_sleeps = Sleeps()
    _adapter(fake_github, "tok-other", other_sleeps).pull_request_get(repo="acme/g", number=1)
    assert other_sleeps.calls == []


def test_fake_github_primary_limit_waits_until_reset(fake_github):
    reset = int(time.time()) + 40
    fake_github.limits.append(
        (
            403,
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
            {"message": "API rate limit exceeded"},
        )
    )
    sleeps = Sleeps()
    gh = _adapter(fake_github, "tok-reset", sleeps)
    gh.checks_get(repo="acme/r", ref="abc")
    assert 30 < sleeps.calls[0] <= 41


def test_fake_github_gives_up_after_repeated_limits_with_a_transient_error(fake_github):
    fake_github.limits.extend([(429, {"Retry-After": "1"}, {})] * 5)
    gh = GitHub(
        api_url=fake_github.url, token="tok-giveup", rate=1000, max_attempts=3, sleep=Sleeps()
    )
    with pytest.raises(CodeHostError) as exc:
        gh.pull_request_get(repo="acme/x", number=1)
    assert exc.value.transient and "rate limited" in str(exc.value)


class _Listener:
    """Another host (127.0.0.2): records the Authorization header of whatever reaches it."""

    def __init__(self):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append(self.headers.get("Authorization", ""))
                raw = json.dumps({"number": 1, "state": "open"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_a_redirect_to_another_host_is_refused_and_never_sees_the_token(fake_github):
    """urllib keeps headers added with `add_header` across redirects: an API answering 302 to
    another host handed it `Authorization: Bearer <token>`."""
    gh = _adapter(fake_github, "tok-redirect", Sleeps())
    other = _Listener()
    try:
        for status in (301, 302, 307, 308):
            fake_github.limits.append(
                (status, {"Location": f"{other.url}/repos/acme/alpha/pulls/1"}, {})
            )
            try:
                gh.pull_request_get(repo="acme/alpha", number=1)
                refused = None
            except CodeHostError as exc:
                refused = exc
            assert other.seen == []
            assert refused is not None and "another host" in str(refused)
            assert refused.status == status
        # The API's own host (a renamed repository's 301) is still followed, with the token.
        gh.pull_request_upsert(repo="acme/alpha", head="h", base="main", title="t", body="")
        fake_github.limits.append(
            (301, {"Location": f"{fake_github.url}/repos/acme/alpha/pulls/1"}, {})
        )
        assert gh.pull_request_get(repo="acme/old-name", number=1).number == 1
        assert fake_github.requests[-1][1:] == (
            "/repos/acme/alpha/pulls/1",
            None,
            "Bearer tok-redirect",
        )
    finally:
        other.close()


def test_repository_slug_from_remote_urls():
    assert github_repo_slug("https://github.com/acme/alpha.git") == "acme/alpha"
    assert github_repo_slug("git@github.com:acme/alpha.git") == "acme/alpha"
    assert github_repo_slug("file:///srv/git/alpha.git") is None
