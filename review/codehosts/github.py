"""GitHub REST adapter: pull requests, their state, check runs and combined status."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from django.conf import settings

from review.codehosts.base import ChecksState, CodeHost, CodeHostError, HostPacer, PullRequest

_SLUG_RES = (
    re.compile(r"^https?://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?\Z"),
    re.compile(r"^(?:ssh://)?git@github\.com[:/]([\w.-]+)/([\w.-]+?)(?:\.git)?/?\Z"),
)
FAILING_CONCLUSIONS = {"failure", "timed_out", "cancelled", "action_required", "startup_failure"}
# Without any header to go by, a secondary limit is waited out this long (GitHub's advice).
DEFAULT_LIMIT_WAIT = 60.0


def github_repo_slug(url: str) -> str | None:
    for pattern in _SLUG_RES:
        m = pattern.match(url.strip())
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    return None


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the API's own scheme, host and port. urllib carries the
    headers a request was given with `add_header` (the token's `Authorization`) to wherever a
    redirect points: an API answering 302 to another host handed that host the token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            raise CodeHostError(
                f"GitHub {req.get_method()} {urllib.parse.urlsplit(req.full_url).path}: "
                f"{code} redirect to another host ({urllib.parse.urlsplit(newurl).netloc}) "
                "refused: the token is sent only to the API's own host",
                status=code,
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# Built once: the handlers are stateless (a redirect's count is kept on the request).
_OPENER = urllib.request.build_opener(_SameOriginRedirects)


def github_from_settings() -> GitHub:
    return GitHub(api_url=settings.GITHUB_API_URL, token=settings.GITHUB_TOKEN)


class GitHub(CodeHost):
    name = "github"

    def __init__(
        self,
        *,
        api_url: str,
        token: str,
        rate: float = 1.0,
        max_attempts: int = 5,
        timeout: float = 30,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.max_attempts = max_attempts
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock
        host = urllib.parse.urlsplit(self.api_url).netloc
        # Mutating calls are paced (GitHub asks for about one per second per credential).
        self.pacer = HostPacer(host=host, credential=token, rate=rate, sleep=sleep, clock=clock)

    # --- HTTP ------------------------------------------------------------------------------

    def _limit_wait(self, status: int, headers, body: dict) -> float | None:
        """Seconds to wait when the response says we hit a primary or secondary limit."""
        if status not in (403, 429):
            return None
        retry_after = headers.get("Retry-After")
        if retry_after:
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                try:
                    return max(0.0, parsedate_to_datetime(retry_after).timestamp() - self._clock())
                except (TypeError, ValueError):
                    return DEFAULT_LIMIT_WAIT
        if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
            try:
                return max(0.0, float(headers["x-ratelimit-reset"]) - self._clock())
            except ValueError:
                return DEFAULT_LIMIT_WAIT
        message = str(body.get("message", "")).lower()
        if status == 429 or "rate limit" in message:
            return DEFAULT_LIMIT_WAIT
        return None

    def _request(self, method: str, path: str, payload: dict | None = None) -> tuple[int, object]:
        url = self.api_url + path
        data = json.dumps(payload).encode() if payload is not None else None
        for attempt in range(1, self.max_attempts + 1):
            self.pacer.wait()
            req = urllib.request.Request(url, data=data, method=method)  # noqa: S310
            req.add_header("Accept", "application/vnd.github+json")
            req.add_header("Authorization", f"Bearer {self.token}")
            req.add_header("X-GitHub-Api-Version", "2022-11-28")
            req.add_header("User-Agent", "convoy")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            try:
                with _OPENER.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                    return resp.status, json.loads(raw) if raw else {}
            except urllib.error.HTTPError as exc:
                raw = exc.read()
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"message": raw[:200].decode("utf-8", "replace")}
                wait = self._limit_wait(exc.code, exc.headers, body)
                if wait is not None:
                    self.pacer.block(wait)
                    continue
                if exc.code >= 500 and attempt < self.max_attempts:
                    self._sleep(min(2**attempt, 30))
                    continue
                if exc.code in (404, 422):
                    return exc.code, body
                raise CodeHostError(
                    f"GitHub {method} {path}: {exc.code} {body.get('message', '')}".strip(),
                    status=exc.code,
                    transient=exc.code >= 500,
                ) from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt < self.max_attempts:
                    self._sleep(min(2**attempt, 30))
                    continue
                raise CodeHostError(f"GitHub unreachable: {exc}", transient=True) from exc
        raise CodeHostError(
            f"GitHub {method} {path}: still rate limited after {self.max_attempts} attempts",
            transient=True,
        )

    # --- adapter ---------------------------------------------------------------------------

    @staticmethod
    def _pr(data: dict) -> PullRequest:
        if data.get("merged") or data.get("merged_at"):
            state = "merged"
        elif data.get("state") == "closed":
            state = "closed"
        elif data.get("draft"):
            state = "draft"
        else:
            state = "open"
        return PullRequest(
            number=int(data["number"]),
            url=data.get("html_url", ""),
            state=state,
            head_sha=(data.get("head") or {}).get("sha", ""),
        )

    def pull_request_upsert(
        self, *, repo: str, head: str, base: str, title: str, body: str, draft: bool = False
    ) -> PullRequest:
        owner = repo.split("/", 1)[0]
        status, data = self._request(
            "POST",
            f"/repos/{repo}/pulls",
            {"title": title, "head": head, "base": base, "body": body, "draft": draft},
        )
        if status == 201:
            return self._pr(data)
        # 422: a pull request for this branch already exists; update it.
        query = urllib.parse.urlencode({"head": f"{owner}:{head}", "state": "open"})
        status, found = self._request("GET", f"/repos/{repo}/pulls?{query}")
        if status != 200 or not found:
            message = data.get("message", "") if isinstance(data, dict) else ""
            raise CodeHostError(f"GitHub refused the pull request: {message}", status=status)
        number = found[0]["number"]
        status, data = self._request(
            "PATCH", f"/repos/{repo}/pulls/{number}", {"title": title, "body": body}
        )
        if status != 200:
            raise CodeHostError(f"GitHub refused the pull request update ({status})", status=status)
        return self._pr(data)

    def pull_request_get(self, *, repo: str, number: int) -> PullRequest:
        status, data = self._request("GET", f"/repos/{repo}/pulls/{number}")
        if status != 200:
            raise CodeHostError(f"pull request {repo}#{number} not found", status=status)
        return self._pr(data)

    def checks_get(self, *, repo: str, ref: str) -> str:
        ref_q = urllib.parse.quote(ref, safe="")
        _, runs = self._request("GET", f"/repos/{repo}/commits/{ref_q}/check-runs")
        _, combined = self._request("GET", f"/repos/{repo}/commits/{ref_q}/status")
        check_runs = runs.get("check_runs", []) if isinstance(runs, dict) else []
        statuses = combined.get("statuses", []) if isinstance(combined, dict) else []
        combined_state = combined.get("state", "") if isinstance(combined, dict) else ""
        if any(r.get("conclusion") in FAILING_CONCLUSIONS for r in check_runs) or (
            statuses and combined_state in ("failure", "error")
        ):
            return ChecksState.FAILING
        if any(r.get("status") != "completed" for r in check_runs) or (
            statuses and combined_state == "pending"
        ):
            return ChecksState.PENDING
        if check_runs or statuses:
            return ChecksState.PASSING
        return ChecksState.NONE
