"""The model gateway: an HTTP server in the worker process that sandboxes reach through the
egress proxy as `gateway.convoy.internal` (a route to its host UNIX socket).

Each request carries a variant's token (`Authorization: Bearer …` or `x-api-key: …`). The
gateway checks the token, the model and the budget (agents.grants), swaps the token for the
provider's real key, forwards to the provider with httpx and passes the response through chunk
by chunk (SSE streams stay streams), reads the usage on the way, then records the call. The
real key exists only in this process; the sandbox never sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection
from django.utils import timezone

from agents.bodies import call_body_check, call_body_pin, call_choices, forward_headers
from agents.grants import (
    Admission,
    Refusal,
    call_admit,
    call_authenticate,
    call_record,
    call_release,
    call_reservation,
    grant_masks,
    token_hash,
)
from agents.models import ApiStyle, CallOutcome
from agents.providers import FREE_ENDPOINTS, provider_key
from agents.usage import UsageReader, transcript_pack
from sandboxes.egress import worker as egress_worker
from sandboxes.egress.policy import AllowRule
from sandboxes.egress.routes import IDENTITY_PREFIX

log = logging.getLogger(__name__)

GATEWAY_HOST = "gateway.convoy.internal"
GATEWAY_PORT = 80
GATEWAY_URL = f"http://{GATEWAY_HOST}"
# The allowlist entry a sandbox's egress policy needs to reach the gateway (and nothing else).
GATEWAY_RULE = AllowRule(GATEWAY_HOST, frozenset({GATEWAY_PORT}))
SOCKET_NAME = "gateway.sock"
HEAD_LIMIT = 64 * 1024
JSON_INLINE = 256 * 1024  # larger request bodies are parsed off the event loop
DISCARD_S = 10.0  # how long a refused request's unread body is drained before closing
# How long a write to the agent may wait for it to read: an agent that stops reading loses its
# answer (the call is still recorded and charged) instead of holding the call open.
WRITE_TIMEOUT_S = 60.0
# A header's name (an HTTP token) and value (printable ASCII, spaces and tabs): anything else
# could not be forwarded to the provider.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length"}
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}


class _BadRequest(Exception):
    pass


def body_limit() -> int:
    """The largest request body read (CONVOY_GATEWAY_BODY_MB)."""
    return settings.GATEWAY_BODY_MB * 1024 * 1024


@dataclass
class _Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    caller: str | None
    chunked: bool
    length: int
    body_read: bool = False


def _endpoint(path: str) -> str:
    """The request's path as a provider routes it, after the base URL: percent-decoded, empty
    and dot segments resolved, the /v1 prefix dropped (`/v1/chat//complet%69ons` is
    `/chat/completions`). The gateway checks this and sends exactly this."""
    segments: list[str] = []
    for segment in unquote(path, errors="replace").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    if segments[:1] == ["v1"]:
        segments = segments[1:]
    return "/" + "/".join(segments)


def _max_tokens(payload: dict) -> int | None:
    """The request's cap on output tokens, when it gives one."""
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _usage_estimate(*, request_size: int, response_size: int, payload: dict) -> tuple[int, int]:
    """(tokens in, tokens out) for an answer without usage: about 4 bytes a token."""
    tokens_out = max(response_size // 4, 1)
    cap = _max_tokens(payload)
    if cap is not None:
        tokens_out = min(tokens_out, cap * call_choices(payload))
    return max(request_size // 4, 1), tokens_out


async def _dumps(payload: dict, *, size: int) -> bytes:
    if size <= JSON_INLINE:
        return json.dumps(payload).encode()
    return (await asyncio.to_thread(json.dumps, payload)).encode()


# A request's path, appended to the provider's base URL: it must start with one `/` and hold
# only path characters. `@host/…` after a base URL without a path (`http://models.internal`)
# would have made the provider's host a user name and sent the key to `host`.
_PATH = re.compile(r"/(?!/)[A-Za-z0-9._~%!$&'()*+,;=:@/-]*\Z")


def _upstream_url(base_url: str, path: str) -> str:
    """The provider's URL for the sandbox's request `path` (its /v1 prefix dropped: the base
    URL has it); _BadRequest unless it stays on the base URL's scheme, host and port."""
    if not _PATH.match(path):
        raise _BadRequest("the request's path must be an absolute path such as /v1/messages")
    url = base_url + (path[3:] if path.startswith("/v1/") else path)
    base, made = urlsplit(base_url), urlsplit(url)
    same = (made.scheme, made.hostname, made.port) == (base.scheme, base.hostname, base.port)
    if not same or made.username is not None or made.password is not None:
        raise _BadRequest("the request's path leaves the provider's address")
    return url


def _error_body(kind: str, message: str) -> bytes:
    # Both SDK families show `error.message`; `type` is what scripts can test.
    return json.dumps({"error": {"type": kind, "message": message}}).encode()


class ModelGateway:
    """One per process. `start()` listens on `root/gateway.sock` (and, for benchmarks and tests
    that call it directly, on 127.0.0.1:`tcp_port` when given); `stop()` ends it."""

    def __init__(self, root: Path, *, tcp_port: int | None = None) -> None:
        self.root = Path(root)
        self.tcp_port = tcp_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._client: httpx.AsyncClient | None = None
        self._lock = threading.Lock()
        # ORM work runs here, off the event loop (Django refuses the ORM inside a loop).
        self._db = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-db")
        # Admission has threads (and database connections) of its own: see call_admit.
        self._admit = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-admit")
        # A call's record is written after the agent has its answer; the same token's next
        # call waits for it, so budgets still count every call before admitting the next.
        self._recording: dict[str, asyncio.Future] = {}
        self._parsing = asyncio.Semaphore(2)

    @property
    def socket_path(self) -> Path:
        return self.root / SOCKET_NAME

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ModelGateway:
        with self._lock:
            if self.running:
                return self
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(
                target=loop.run_forever, name="model-gateway", daemon=True
            )
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=30)
        return self

    async def _listen(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            trust_env=True,  # the host's own HTTPS_PROXY, if it has one, for the upstream
        )
        server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=HEAD_LIMIT
        )
        os.chmod(self.socket_path, 0o600)
        self._servers = [server]
        if self.tcp_port is not None:
            tcp = await asyncio.start_server(
                self._serve, "127.0.0.1", self.tcp_port, limit=HEAD_LIMIT
            )
            self.tcp_port = tcp.sockets[0].getsockname()[1]
            self._servers.append(tcp)

    def stop(self) -> None:
        with self._lock:
            if not self.running or self._loop is None:
                return
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
            self._loop = None
        self._db.shutdown(wait=False)
        self._admit.shutdown(wait=False)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        await asyncio.gather(*list(self._recording.values()), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _orm(self, fn, *, pool: ThreadPoolExecutor | None = None, **kwargs):
        def run():
            # The pool's threads keep their connections (a health check per call would cost a
            # round trip); one that broke is replaced and the work tried once more.
            try:
                return fn(**kwargs)
            except (InterfaceError, OperationalError):
                close_old_connections()
                connection.close()
                return fn(**kwargs)

        return await asyncio.get_running_loop().run_in_executor(pool or self._db, partial(run))

    # ---- one connection: one request ---------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request: _Request | None = None
        try:
            request = await self._head_read(reader)
            await self._call(request, reader, writer)
        except _BadRequest as e:
            await self._answer(writer, 400, _error_body("bad_request", f"Convoy gateway: {e}"))
        except Refusal as r:
            await self._answer(
                writer,
                r.status,
                _error_body(r.kind, r.message),
                retry_after=r.kind == "budget_held",
            )
            if request is not None and not request.body_read:
                await self._body_discard(reader, writer, request)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("model gateway: request failed")
            with contextlib.suppress(Exception):
                await self._answer(
                    writer, 500, _error_body("gateway_error", "Convoy gateway error")
                )
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _head_read(self, reader) -> _Request:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        except asyncio.LimitOverrunError as e:
            raise _BadRequest("request head too large") from e
        lines = raw.decode("latin-1").split("\r\n")
        # The egress proxy's line naming the calling sandbox, before any byte of the sandbox's.
        caller = (
            lines.pop(0)[len(IDENTITY_PREFIX) :] if lines[0].startswith(IDENTITY_PREFIX) else None
        )
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadRequest("not an HTTP request") from None
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _BadRequest("bad header line")
                name, value = name.strip(), value.strip()
                if not _HEADER_NAME.match(name):
                    raise _BadRequest(f"header name {name!r} is not an HTTP token")
                if not _HEADER_VALUE.match(value):
                    raise _BadRequest(
                        f"header {name} has a value that is not printable ASCII "
                        "(non-ASCII and control characters cannot be forwarded)"
                    )
                headers.append((name, value))
        lower = {k.lower(): v for k, v in headers}
        chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        length = 0
        if not chunked:
            try:
                length = int(lower.get("content-length", "0"))
            except ValueError:
                raise _BadRequest("bad Content-Length") from None
            if not 0 <= length <= body_limit():
                raise _BadRequest(f"request body over {body_limit()} bytes")
        # Through the host's proxy chain the target may be in absolute form.
        path = urlsplit(target).path if target.startswith("http") else target.split("?")[0]
        if not _PATH.match(path):
            raise _BadRequest("the request's path must be an absolute path such as /v1/messages")
        return _Request(method, path, headers, caller, chunked, length)

    async def _body_read(self, reader, request: _Request) -> bytes:
        request.body_read = True
        if request.chunked:
            return await self._chunked_read(reader)
        return await asyncio.wait_for(reader.readexactly(request.length), 120)

    async def _chunked_read(self, reader) -> bytes:
        body = bytearray()
        limit = body_limit()
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 60)
            try:
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(body)
            if size < 0 or len(body) + size > limit:
                raise _BadRequest(f"request body over {limit} bytes")
            body += await reader.readexactly(size)
            await reader.readexactly(2)

    async def _body_discard(self, reader, writer, request: _Request) -> None:
        """After a refusal sent before the body was read: read and drop what the client still
        sends (never kept, never parsed), so closing does not reset the connection before the
        client read the answer."""
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
        left = body_limit() if request.chunked else request.length
        deadline = asyncio.get_running_loop().time() + DISCARD_S
        with contextlib.suppress(Exception):
            while left > 0:
                wait = deadline - asyncio.get_running_loop().time()
                piece = await asyncio.wait_for(reader.read(min(left, 64 * 1024)), max(wait, 0))
                if not piece:
                    return
                left -= len(piece)

    async def _json(self, body: bytes) -> dict:
        try:
            if len(body) <= JSON_INLINE:
                payload = json.loads(body) if body else {}
            else:  # off the event loop, and few at a time (parsing multiplies the memory)
                async with self._parsing:
                    payload = await asyncio.to_thread(json.loads, body)
        except (ValueError, RecursionError):
            raise _BadRequest("the body is not JSON") from None
        if not isinstance(payload, dict):
            raise _BadRequest("the body is not a JSON object")
        return payload

    async def _answer(self, writer, status: int, body: bytes, *, retry_after: bool = False) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("Retry-After: 1\r\n" if retry_after else "")
            + "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

    async def _refusal_record(self, r: Refusal, *, model: str, path: str, stream: bool, began):
        if r.grant is None:
            return
        await self._orm(
            call_record,
            grant=r.grant,
            provider_name=r.grant.provider.name,
            model=model,
            path=path,
            stream=stream,
            status_code=r.status,
            outcome=CallOutcome.REFUSED,
            error=r.message,
            started_at=began[1],
            latency_ms=int((time.monotonic() - began[0]) * 1000),
        )

    async def _call(self, request: _Request, reader, writer) -> None:
        began = (time.monotonic(), timezone.now())
        method, path, headers, caller = (
            request.method,
            request.path,
            request.headers,
            request.caller,
        )
        lower = {k.lower(): v for k, v in headers}
        auth = lower.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else lower.get("x-api-key", "")
        endpoint = _endpoint(path)
        # The token, the caller and the endpoint before a byte of the body is read: a sandbox
        # without a valid token cannot make the gateway read and parse megabytes.
        try:
            grant = await self._orm(
                call_authenticate,
                pool=self._admit,
                token=token,
                caller=caller,
                method=method,
                endpoint=endpoint,
            )
        except Refusal as r:
            await self._refusal_record(
                r, model="", path=f"{method} {path}", stream=False, began=began
            )
            raise
        body = await self._body_read(reader, request)
        payload = await self._json(body)
        model = payload.get("model") if isinstance(payload.get("model"), str) else None
        stream = payload.get("stream") is True
        # Tools the provider runs, URLs it fetches, state it keeps: refused before admission.
        try:
            if len(body) <= JSON_INLINE:
                call_body_check(grant=grant, payload=payload)
            else:
                await asyncio.to_thread(call_body_check, grant=grant, payload=payload)
        except Refusal as r:
            await self._refusal_record(r, model=model or "", path=path, stream=stream, began=began)
            raise
        key_hash = token_hash(token)
        # Calls of a budgeted grant run side by side: each holds a reservation of what it may
        # cost (call_reservation) against the grant's and the campaign's budget until its
        # record settles it. The token's previous call's record is waited for (it lands just
        # after that answer ends), so admission counts every finished call.
        previous = self._recording.get(key_hash)
        if previous is not None:
            await asyncio.wait([previous])
        await self._forward(
            grant=grant,
            token=token,
            key_hash=key_hash,
            method=method,
            path=path,
            endpoint=endpoint,
            headers=headers,
            payload=payload,
            request_size=len(body),
            model=model,
            stream=stream,
            caller=caller,
            writer=writer,
            began=began,
        )

    async def _forward(
        self,
        *,
        grant,
        token,
        key_hash,
        method,
        path,
        endpoint,
        headers,
        payload,
        request_size,
        model,
        stream,
        caller,
        writer,
        began,
    ) -> None:
        reserve = await self._orm(
            call_reservation,
            grant=grant,
            request_bytes=request_size,
            max_tokens=_max_tokens(payload),
            choices=call_choices(payload),
        )
        try:
            admission: Admission = await self._orm(
                call_admit,
                pool=self._admit,
                token=token,
                model=model,
                method=method,
                endpoint=endpoint,
                reserve=reserve,
                fast_commit=True,
                caller=caller,
            )
        except Refusal as r:
            await self._refusal_record(r, model=model or "", path=path, stream=stream, began=began)
            raise
        provider = admission.provider
        record = partial(
            call_record,
            grant=admission.grant,
            provider_name=provider.name,
            model=model or "",
            path=path,
            stream=stream,
            started_at=began[1],
            input_per_mtok=provider.input_usd_per_mtok,
            output_per_mtok=provider.output_usd_per_mtok,
            reserved=reserve,
        )
        # From here on the call holds its reservation (and its count): whatever happens, it
        # ends with a record that settles it (or, failing that, a release).
        call = {"status_code": 500, "outcome": CallOutcome.UNREACHABLE, "settled": False}
        try:
            await self._exchange(
                admission=admission,
                record=record,
                call=call,
                token=token,
                key_hash=key_hash,
                endpoint=endpoint,
                headers=headers,
                payload=payload,
                request_size=request_size,
                stream=stream,
                writer=writer,
                began=began,
            )
        except BaseException as e:
            if not call["settled"]:
                call["error"] = f"Convoy gateway error: {type(e).__name__}" + (
                    f" (after the provider answered {call['status_code']})"
                    if call.get("answered")
                    else ""
                )
            raise
        finally:
            if not call["settled"]:
                await self._settle_anyway(record, admission, reserve, call, began)

    async def _settle_anyway(self, record, admission, reserve, call, began) -> None:
        """The call failed before its record was written: record it now (without its
        transcript, with the usage read so far), or at least release its reservation."""
        error = call.get("error") or "Convoy gateway error: the call's record was not written"
        try:
            await self._orm(
                record,
                status_code=call["status_code"],
                outcome=call["outcome"],
                tokens_in=call.get("tokens_in", 0),
                tokens_out=call.get("tokens_out", 0),
                error=error,
                latency_ms=int((time.monotonic() - began[0]) * 1000),
            )
            return
        except Exception:
            log.exception("model gateway: a failed call's record was not written")
        try:
            await self._orm(call_release, grant=admission.grant, reserved=reserve, error=error)
        except Exception:
            log.exception("model gateway: a failed call's reservation was not released")

    async def _exchange(
        self,
        *,
        admission,
        record,
        call,
        token,
        key_hash,
        endpoint,
        headers,
        payload,
        request_size,
        stream,
        writer,
        began,
    ) -> None:
        """The admitted call: to the provider and back. `call` says how far it got (for
        _settle_anyway); call["settled"] once its record is written."""
        lower = {k.lower(): v for k, v in headers}
        provider = admission.provider
        key = provider_key(provider)
        if stream and provider.api_style == ApiStyle.OPENAI and endpoint == "/chat/completions":
            # Usage arrives in a last chunk only when asked for; SDKs handle that chunk.
            options = payload.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            if not options.get("include_usage"):
                options["include_usage"] = True
                payload["stream_options"] = options
        call_body_pin(api_style=provider.api_style, endpoint=endpoint, payload=payload)
        # What the provider gets is what was checked (one `model`, however the JSON spelled it).
        body = await _dumps(payload, size=request_size)
        url = _upstream_url(provider.base_url, endpoint)
        out_headers = forward_headers(headers, api_style=provider.api_style)
        out_headers.append(("Accept-Encoding", "identity"))  # usage is read from plain bytes
        if provider.api_style == ApiStyle.ANTHROPIC:
            out_headers.append(("x-api-key", key))
            if "anthropic-version" not in lower:
                out_headers.append(("anthropic-version", "2023-06-01"))
        else:
            out_headers.append(("Authorization", f"Bearer {key}"))
        masks = (key, token, *grant_masks(admission.grant.pk))
        # A free endpoint's request (count_tokens: up to the body limit, at no cost) is not
        # kept: only calls that are charged have their request in the transcript.
        kept_request = b"" if endpoint in FREE_ENDPOINTS else body
        reader = UsageReader(stream=stream)
        assert self._client is not None
        upstream = self._client.build_request("POST", url, headers=out_headers, content=body)
        try:
            response = await self._client.send(upstream, stream=True)
        except httpx.HTTPError as e:
            where = urlsplit(provider.base_url).netloc
            message = (
                f"Convoy gateway: model provider {provider.name!r} is unreachable at {where}: "
                f"{type(e).__name__}: {str(e) or 'no answer'}"
            )
            await self._orm(
                record,
                status_code=502,
                outcome=CallOutcome.UNREACHABLE,
                error=message,
                latency_ms=int((time.monotonic() - began[0]) * 1000),
                transcript=transcript_pack(
                    request=kept_request, response=b"", response_size=0, masks=masks
                ),
            )
            call["settled"] = True
            await self._answer(writer, 502, _error_body("provider_unreachable", message))
            return
        ok = 200 <= response.status_code < 300
        call.update(
            status_code=response.status_code,
            outcome=CallOutcome.OK if ok else CallOutcome.UPSTREAM_ERROR,
            answered=True,
        )
        first_byte_ms = None
        client_gone = ""
        try:
            # The provider's header bytes as they came (h11 checked them): decoded, a value
            # outside latin-1 could not be written back.
            reason = (response.reason_phrase or "OK").encode("ascii", "replace")
            head = [b"HTTP/1.1 %d %s" % (response.status_code, reason)]
            head += [
                k + b": " + v
                for k, v in response.headers.raw
                if k.decode("latin-1").lower() not in _DROP_RESPONSE
            ]
            head.append(b"Connection: close")
            writer.write(b"\r\n".join(head) + b"\r\n\r\n")
            async for chunk in response.aiter_raw():
                if first_byte_ms is None:
                    first_byte_ms = int((time.monotonic() - began[0]) * 1000)
                reader.feed(chunk)
                if not client_gone:
                    try:
                        writer.write(chunk)
                        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
                    except (ConnectionError, RuntimeError) as e:
                        client_gone = f"the agent closed the connection ({type(e).__name__})"
                    except TimeoutError:
                        client_gone = (
                            f"the agent stopped reading its answer ({WRITE_TIMEOUT_S:g} s "
                            "without progress); the rest was read for its usage, not sent"
                        )
                        writer.transport.abort()
        except httpx.HTTPError as e:
            client_gone = f"the provider's answer broke off: {type(e).__name__}"
        finally:
            await response.aclose()
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            writer.close()
        reader.finish()
        tokens_in, tokens_out = reader.tokens_in, reader.tokens_out
        # An answer that shows no usage is never free: the tokens are estimated from its bytes
        # (and the request's), at most the request's max tokens out, and marked as estimated.
        estimated = ok and not reader.found and endpoint not in FREE_ENDPOINTS
        if estimated:
            tokens_in, tokens_out = _usage_estimate(
                request_size=len(body), response_size=reader.size, payload=payload
            )
        call.update(tokens_in=tokens_in, tokens_out=tokens_out, error=client_gone)
        task = asyncio.ensure_future(
            self._orm(
                record,
                status_code=response.status_code,
                outcome=call["outcome"],
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                usage_estimated=estimated,
                latency_ms=int((time.monotonic() - began[0]) * 1000),
                first_byte_ms=first_byte_ms,
                error=client_gone,
                transcript=transcript_pack(
                    request=kept_request,
                    response=bytes(reader.kept),
                    response_size=reader.size,
                    masks=masks,
                    usage_estimated=estimated,
                ),
            )
        )
        self._recording[key_hash] = task
        task.add_done_callback(partial(self._recorded, key_hash))
        await asyncio.wait([task])
        call["settled"] = not task.cancelled() and task.exception() is None

    def _recorded(self, key_hash: str, task: asyncio.Future) -> None:
        if self._recording.get(key_hash) is task:
            del self._recording[key_hash]
        if not task.cancelled() and task.exception() is not None:
            log.error("model gateway: a call was not recorded", exc_info=task.exception())


# ---- this process's gateway ------------------------------------------------------------------

_gateway: ModelGateway | None = None
_pid = 0
_glock = threading.Lock()


def gateway_root() -> Path:
    return Path(settings.DATA_DIR) / "gateway" / str(os.getpid())


def _stale_roots_remove() -> None:
    """Socket directories of worker processes that are gone (a crash leaves them behind)."""
    for entry in (Path(settings.DATA_DIR) / "gateway").glob("[0-9]*"):
        try:
            os.kill(int(entry.name), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (PermissionError, ValueError):
            continue


def model_gateway() -> ModelGateway:
    """This process's running gateway (started on first use; fresh after a fork), routed from
    the egress proxy as gateway.convoy.internal:80."""
    global _gateway, _pid
    with _glock:
        if _gateway is None or _pid != os.getpid():
            _stale_roots_remove()
            _gateway = ModelGateway(gateway_root())
            _pid = os.getpid()
        gateway = _gateway.start()
    # identify: the proxy tells the gateway which sandbox calls (a token works only there).
    egress_worker.egress_route_add(
        GATEWAY_HOST, GATEWAY_PORT, str(gateway.socket_path), identify=True
    )
    return gateway


def model_gateway_stop() -> None:
    global _gateway
    with _glock:
        gateway, _gateway = (_gateway, None) if _pid == os.getpid() else (None, None)
    if gateway is not None:
        egress_worker.egress_route_remove(GATEWAY_HOST, GATEWAY_PORT)
        gateway.stop()
        shutil.rmtree(gateway.root, ignore_errors=True)
