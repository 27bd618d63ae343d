"""The model gateway in process: token swap, streaming, usage, budgets, refusals, masking."""

import json
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection, transaction

from agents.gateway import ModelGateway
from agents.grants import grant_mint, grants_revoke
from agents.models import CallOutcome, ModelCall, ModelGrant
from agents.providers import provider_set
from agents.selectors import variant_transcript
from agents.spec import model_for_variant
from audit.models import AuditEvent
from campaigns.spec import spec_parse
from tests.agents.fake_model_server import USAGE, FakeModelServer
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.shapes("embedded", "production"), pytest.mark.django_db(transaction=True)]

REAL_KEY = "sk-real-provider-key-0123456789abcdef"


@pytest.fixture
def fake():
    with FakeModelServer() as server:
        yield server


@pytest.fixture
def gateway(tmp_path):
    gw = ModelGateway(settings.DATA_DIR / "gw-test", tcp_port=0).start()
    yield gw
    gw.stop()


def _provider(admin, base_url, **kw):
    return provider_set(
        name=kw.pop("name", "fake-openai"),
        api_style=kw.pop("api_style", "openai"),
        base_url=base_url,
        key=REAL_KEY,
        allowed_models=kw.pop("allowed_models", ["fake-model"]),
        input_usd_per_mtok="1000",
        output_usd_per_mtok="2000",
        actor=admin,
        **kw,
    )


def _grant(**kw):
    defaults = dict(
        campaign_id=7,
        run_id=8,
        variant_id=9,
        provider_name="fake-openai",
        model="fake-model",
        masks=("run-secret-value",),
    )
    return grant_mint(**{**defaults, **kw})


def _post(gateway, path, token, body, *, header="Authorization", recorded=True):
    """POST through the gateway; wait until the call's record is written (it lands just after
    the answer ends)."""
    before = ModelCall.objects.count()
    value = f"Bearer {token}" if header == "Authorization" else token
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.tcp_port}{path}",
        data=json.dumps(body).encode(),
        headers={header: value, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer = response.status, response.read()
    except urllib.error.HTTPError as e:
        answer = e.code, e.read()
    if recorded:
        wait_for(lambda: ModelCall.objects.count() > before, timeout=10, what="the call's record")
    return answer


def test_non_streaming_call_swaps_the_token_for_the_key(admin_user, fake, gateway):
    _provider(admin_user, fake.base_url)
    grant, token = _grant()
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "run-secret-value"}]}
    status, data = _post(gateway, "/v1/chat/completions", token, body)
    assert status == 200
    assert json.loads(data)["choices"][0]["message"]["content"].startswith("{")
    # The provider saw the real key; never the token.
    seen = fake.requests[-1]
    assert seen["headers"]["Authorization"] == f"Bearer {REAL_KEY}"
    assert token not in json.dumps(seen)
    call = ModelCall.objects.get(variant_id=9)
    assert (call.tokens_in, call.tokens_out) == (120, 30)
    assert call.outcome == CallOutcome.OK and call.status_code == 200
    assert str(call.cost_usd) == "0.180000"  # 120 x $1000/M + 30 x $2000/M
    grant.refresh_from_db()
    assert grant.calls == 1 and str(grant.spent_usd) == "0.180000"
    event = json.loads(AuditEvent.objects.filter(action="agents.model.called").get().body)
    assert event["context"]["variant_id"] == 9
    assert event["payload"]["tokens_in"] == 120
    transcript = json.dumps(variant_transcript(variant_id=9))
    assert "run-secret-value" not in transcript and "[masked]" in transcript
    assert REAL_KEY not in transcript and token not in transcript


def test_streaming_passes_sse_through_and_reads_the_final_usage_chunk(admin_user, fake, gateway):
    _provider(admin_user, fake.base_url)
    _grant_row, token = _grant()
    body = {"model": "fake-model", "messages": [], "stream": True}
    status, data = _post(gateway, "/v1/chat/completions", token, body)
    assert status == 200
    events = [line for line in data.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    text = "".join(
        c["delta"].get("content", "") for e in events[:-1] for c in json.loads(e[6:])["choices"]
    )
    assert json.loads(text)["new"] == "assertEqual("
    # The gateway asked for the usage chunk and counted it.
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    call = ModelCall.objects.get(variant_id=9)
    assert call.stream and (call.tokens_in, call.tokens_out) == (
        USAGE["prompt_tokens"],
        USAGE["completion_tokens"],
    )
    assert call.first_byte_ms is not None


def test_anthropic_style_uses_x_api_key(admin_user, fake, gateway):
    _provider(admin_user, fake.base_url, name="fake-anthropic", api_style="anthropic")
    _grant_row, token = _grant(provider_name="fake-anthropic")
    body = {"model": "fake-model", "max_tokens": 10, "messages": [], "stream": True}
    status, _data = _post(gateway, "/v1/messages", token, body, header="x-api-key")
    assert status == 200
    headers = fake.requests[-1]["headers"]
    assert headers["x-api-key"] == REAL_KEY and "Authorization" not in headers
    call = ModelCall.objects.get(variant_id=9)
    assert call.tokens_out == 30


def test_max_calls_refuses_the_next_call_with_a_clear_error(admin_user, fake, gateway):
    _provider(admin_user, fake.base_url)
    grant, token = _grant(max_calls=1)
    body = {"model": "fake-model", "messages": []}
    assert _post(gateway, "/v1/chat/completions", token, body)[0] == 200
    status, data = _post(gateway, "/v1/chat/completions", token, body)
    assert status == 429
    error = json.loads(data)["error"]
    assert error["type"] == "budget_exhausted"
    assert "budget exhausted" in error["message"] and "max_calls 1" in error["message"]
    assert len(fake.requests) == 1  # the refused call never reached the provider
    grant.refresh_from_db()
    assert grant.exhausted == "calls"
    refused = ModelCall.objects.get(variant_id=9, outcome=CallOutcome.REFUSED)
    assert refused.status_code == 429
    assert AuditEvent.objects.filter(action="agents.model.called").count() == 2


def test_budget_usd_refuses_once_spent(admin_user, fake, gateway):
    _provider(admin_user, fake.base_url)
    grant, token = _grant(budget_usd=0.1)
    body = {"model": "fake-model", "messages": []}
    assert _post(gateway, "/v1/chat/completions", token, body)[0] == 200  # costs $0.18
    assert _post(gateway, "/v1/chat/completions", token, body)[0] == 429
    grant.refresh_from_db()
    assert grant.exhausted == "budget"


def test_a_spec_without_a_campaign_budget_is_held_to_the_providers_ceiling(
    admin_user, fake, gateway
):
    """A spec without `campaign_budget_usd` gave its grants no campaign budget: a manager could
    spend without limit on any provider. Now the grant gets the provider's ceiling and the
    gateway refuses the calls past it."""
    _provider(admin_user, fake.base_url, max_campaign_budget_usd="0.25")
    spec = spec_parse(
        'name: capped\nrepos: {tag: anything}\ntransform: {run: "true"}\n'
        "model: {provider: fake-openai, name: fake-model}\n"
    ).data
    model = model_for_variant(spec, spec["variants"][0])
    assert "campaign_budget_usd" not in model
    grant, token = _grant(  # as campaigns.agents.variant_model_env mints it
        provider_name=model["provider"],
        model=model["name"],
        budget_usd=model.get("budget_usd"),
        campaign_budget_usd=model.get("campaign_budget_usd"),
    )
    assert grant.campaign_budget_usd == Decimal("0.25")
    body = {"model": "fake-model", "messages": []}
    assert _post(gateway, "/v1/chat/completions", token, body)[0] == 200  # $0.18
    assert _post(gateway, "/v1/chat/completions", token, body)[0] == 200  # $0.36: crossed
    status, data = _post(gateway, "/v1/chat/completions", token, body)
    assert status == 429
    error = json.loads(data)["error"]
    assert error["type"] == "budget_exhausted"
    assert "the campaign's model budget ($0.25) is spent" in error["message"]
    assert len(fake.requests) == 2  # the refused call never reached the provider
    grant.refresh_from_db()
    assert grant.exhausted == "campaign"


def test_refusals_bad_token_revoked_token_other_model(admin_user, fake, gateway):
    _provider(admin_user, fake.base_url)
    _grant_row, token = _grant()
    body = {"model": "fake-model", "messages": []}
    assert (
        _post(gateway, "/v1/chat/completions", "convoy-gw-forged", body, recorded=False)[0] == 401
    )
    status, data = _post(gateway, "/v1/chat/completions", token, {**body, "model": "gpt-big"})
    assert status == 403 and "not granted" in json.loads(data)["error"]["message"]
    grants_revoke(variant_id=9)
    status, data = _post(gateway, "/v1/chat/completions", token, body, recorded=False)
    assert status == 401 and "ended with its sandbox" in json.loads(data)["error"]["message"]
    assert fake.requests == []


def test_unreachable_provider_names_the_provider(admin_user, gateway):
    _provider(admin_user, f"http://127.0.0.1:{free_port()}/v1", name="down-provider")
    grant, token = _grant(provider_name="down-provider")
    status, data = _post(gateway, "/v1/chat/completions", token, {"model": "fake-model"})
    assert status == 502
    error = json.loads(data)["error"]
    assert error["type"] == "provider_unreachable"
    assert "model provider 'down-provider' is unreachable" in error["message"]
    grant.refresh_from_db()
    assert "down-provider" in grant.last_error
    assert ModelCall.objects.get(variant_id=9).outcome == CallOutcome.UNREACHABLE


def test_the_key_is_stored_encrypted(admin_user, fake):
    provider = _provider(admin_user, fake.base_url)
    assert REAL_KEY.encode() not in bytes(provider.key_ciphertext)
    assert not ModelGrant.objects.exists()
    assert REAL_KEY not in "".join(e.body for e in AuditEvent.objects.all())


def _post_as(gateway, caller, token) -> int:
    """A call as the egress proxy makes it: its line naming the sandbox, then the request."""
    body = json.dumps({"model": "fake-model", "messages": []}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway.convoy.internal\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    preamble = f"CONVOY-SANDBOX {caller}\r\n".encode() if caller else b""
    with socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=30) as conn:
        conn.sendall(preamble + head + body)
        status_line = conn.makefile("rb").readline()
    return int(status_line.split()[1])


def test_a_token_works_only_from_the_sandbox_it_was_given_to(admin_user, fake, gateway):
    _provider(admin_user, fake.base_url)
    _grant_row, token = _grant(sandbox_id=41)
    assert _post_as(gateway, "sandbox-41", token) == 200
    # Copied out to another sandbox, or used without the proxy naming the sandbox: refused.
    assert _post_as(gateway, "sandbox-42", token) == 403
    assert _post_as(gateway, None, token) == 403
    refused = ModelCall.objects.filter(variant_id=9, outcome=CallOutcome.REFUSED)
    wait_for(lambda: refused.count() == 2, timeout=10, what="the refusals' records")
    assert len(fake.requests) == 1  # the provider saw only the call from the right sandbox


@pytest.mark.parametrize("target", ["@{addr}/messages", ".{addr}/messages", "//{addr}/messages"])
def test_a_request_path_cannot_send_the_key_to_another_host(admin_user, fake, gateway, target):
    """The gateway appends the request's path to the provider's base URL. With a base URL
    without a path (a provider at its server's root), a path such as `@host:port/messages`
    made the provider's address a user name and sent the real key to `host:port`. Such a
    path is refused (400) and nothing reaches the other host."""
    root = fake.base_url.rsplit("/v1", 1)[0]
    _provider(admin_user, root + "/", api_style="anthropic")
    _grant_row, token = _grant()
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    other.setblocking(False)
    addr = f"127.0.0.1:{other.getsockname()[1]}"
    body = json.dumps({"model": "fake-model", "messages": []}).encode()
    head = (
        f"POST {target.format(addr=addr)} HTTP/1.1\r\nHost: x\r\nx-api-key: {token}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=15) as s:
            s.sendall(head.encode() + body)
            answer = s.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 400"), answer
        # An upstream call comes before the answer: a connection would be in the backlog.
        with pytest.raises(BlockingIOError):
            other.accept()
    finally:
        other.close()


def _raw(gateway, method, path, token, body=b"", *, length=None, timeout=30, extra=b""):
    """One request as bytes (any method and path, as a sandbox could send it); the answer's
    status and body. `extra`: more header lines, as bytes."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    length = len(body) if length is None else length
    head = (
        (
            f"{method} {path} HTTP/1.1\r\nHost: gateway.convoy.internal\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "")
            + f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=timeout) as conn:
        conn.sendall(head + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    ("style", "method", "path"),
    [
        ("openai", "GET", "/v1/chat/completions"),  # lists stored completions of every campaign
        ("openai", "GET", "/v1/chat/complet%69ons"),
        ("openai", "DELETE", "/v1/files/file-of-another-campaign"),
        ("openai", "POST", "/v1/files"),
        ("openai", "POST", "/v1/%2e%2e/v1/batches"),
        ("anthropic", "POST", "/v1/messages/batches"),  # runs other models, costs nothing here
        ("anthropic", "POST", "/v1/messages/./batches"),
        ("anthropic", "POST", "/v1/chat/completions"),  # another style's endpoint
    ],
)
def test_only_posts_to_inference_endpoints_reach_the_provider(
    admin_user, fake, gateway, style, method, path
):
    """The gateway forwarded any method and path with the provider's key: other campaigns'
    stored prompts were readable and batches ran at no cost. Now those are refused (403, a
    refusal recorded and audited) and the provider sees nothing."""
    _provider(admin_user, fake.base_url, api_style=style)
    _grant_row, token = _grant()
    status, data = _raw(gateway, method, path, token, {"model": "fake-model", "requests": []})
    assert status == 403, data
    error = json.loads(data)["error"]
    assert error["type"] == "endpoint_not_allowed" and "not a model call" in error["message"]
    assert fake.requests == []
    wait_for(
        lambda: ModelCall.objects.filter(outcome=CallOutcome.REFUSED).exists(),
        timeout=10,
        what="the refusal's record",
    )
    event = AuditEvent.objects.get(action="agents.model.called")
    assert json.loads(event.body)["payload"]["status"] == 403


def test_a_percent_encoded_path_is_the_endpoint_it_names(admin_user, fake, gateway):
    """`/v1/chat/complet%69ons` is checked, sent and counted as /chat/completions: before, it
    went through as it was, without the usage chunk asked for, so it cost nothing."""
    _provider(admin_user, fake.base_url)
    _grant_row, token = _grant()
    body = {"model": "fake-model", "messages": [], "stream": True}
    status, _data = _raw(gateway, "POST", "/v1/chat//complet%69ons", token, body)
    assert status == 200
    seen = fake.requests[-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"]["stream_options"] == {"include_usage": True}
    wait_for(lambda: ModelCall.objects.exists(), timeout=10, what="the call's record")
    call = ModelCall.objects.get()
    assert (call.tokens_in, call.tokens_out) == (USAGE["prompt_tokens"], USAGE["completion_tokens"])


def test_another_of_the_providers_models_is_refused(admin_user, fake, gateway):
    """A token works for its variant's model only (it worked for any of the provider's
    allowed models, priced as the granted one)."""
    _provider(admin_user, fake.base_url, allowed_models=["fake-model", "dear-model"])
    _grant_row, token = _grant()
    status, data = _post(gateway, "/v1/chat/completions", token, {"model": "dear-model"})
    assert status == 403 and "not granted" in json.loads(data)["error"]["message"]
    # Nor with the model twice in the JSON: the provider gets the body that was checked.
    raw = b'{"model": "dear-model", "model": "fake-model", "messages": []}'
    status, _data = _raw(gateway, "POST", "/v1/chat/completions", token, raw)
    assert status == 200
    assert [r["body"]["model"] for r in fake.requests] == ["fake-model"]


def test_a_large_answers_usage_is_counted(admin_user, gateway):
    """An answer over 2 MiB (logprobs, n) was never read for usage and cost nothing."""
    with FakeModelServer(script=lambda request: "x" * (3 * 1024 * 1024)) as server:
        _provider(admin_user, server.base_url)
        _grant_row, token = _grant()
        status, data = _post(gateway, "/v1/chat/completions", token, {"model": "fake-model"})
    assert status == 200 and len(data) > 3 * 1024 * 1024
    call = ModelCall.objects.get()
    assert (call.tokens_in, call.tokens_out) == (120, 30)
    assert str(call.cost_usd) == "0.180000"


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_without_usage_is_charged_an_estimate(admin_user, gateway, stream):
    with FakeModelServer(usage=False) as server:
        _provider(admin_user, server.base_url)
        grant, token = _grant()
        body = {"model": "fake-model", "messages": [], "stream": stream}
        assert _post(gateway, "/v1/chat/completions", token, body)[0] == 200
    call = ModelCall.objects.get()
    assert call.tokens_in > 0 and call.tokens_out > 0 and call.cost_usd > 0
    grant.refresh_from_db()
    assert grant.spent_usd == call.cost_usd
    assert variant_transcript(variant_id=9)[0]["usage_estimated"] is True
    event = json.loads(AuditEvent.objects.get(action="agents.model.called").body)
    assert event["payload"]["usage_estimated"] is True


def test_a_request_without_a_valid_token_is_refused_before_its_body_is_read(
    admin_user, fake, gateway
):
    """The gateway read and parsed up to 32 MiB before looking at the token. Now a request
    without a valid token is answered at once: here the body is announced and never sent."""
    _provider(admin_user, fake.base_url)
    for token in ("", "convoy-gw-forged"):
        status, data = _raw(
            gateway, "POST", "/v1/chat/completions", token, length=5_000_000, timeout=5
        )
        assert status == 401, data


def test_a_body_over_the_limit_is_refused_before_it_is_read(admin_user, fake, gateway):
    _provider(admin_user, fake.base_url)
    _grant_row, token = _grant()
    status, data = _raw(
        gateway, "POST", "/v1/chat/completions", token, length=20 * 1024 * 1024, timeout=5
    )
    assert status == 400 and b"request body over" in data


def _parallel(n, fn):
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: fn(i), range(n)))


def test_parallel_calls_do_not_overrun_the_budget(admin_user, gateway):
    """budget_usd was checked against the spend of finished calls only: 10 calls at once were
    all admitted ($1.80 against $0.25). Now each call holds what it may cost (max_tokens out:
    $0.20 here) against the budget while it runs: at most two are admitted, the others are
    told the budget is held by calls in flight."""
    with FakeModelServer(first_token_delay_s=0.3) as server:
        _provider(admin_user, server.base_url)
        grant, token = _grant(budget_usd=0.25)
        body = {"model": "fake-model", "messages": [], "stream": True, "max_tokens": 100}
        answers = _parallel(
            10, lambda i: _raw(gateway, "POST", "/v1/chat/completions", token, body)
        )
    statuses = [status for status, _data in answers]
    assert 1 <= statuses.count(200) <= 2 and statuses.count(429) >= 8, statuses
    wait_for(lambda: ModelCall.objects.count() == 10, timeout=20, what="the records")
    grant.refresh_from_db()
    assert grant.spent_usd == Decimal("0.18") * statuses.count(200) <= Decimal("0.36")


def test_parallel_calls_of_a_campaigns_variants_do_not_overrun_its_budget(admin_user, gateway):
    """The campaign's budget was checked against finished calls only; each call now holds
    its worst case (max_tokens out) against it until it ends."""
    with FakeModelServer(first_token_delay_s=0.3) as server:
        _provider(admin_user, server.base_url)
        tokens = [_grant(variant_id=v, campaign_budget_usd=0.25)[1] for v in range(20, 26)]
        body = {"model": "fake-model", "messages": [], "stream": True, "max_tokens": 100}
        statuses = _parallel(
            6, lambda i: _raw(gateway, "POST", "/v1/chat/completions", tokens[i], body)[0]
        )
    assert statuses.count(200) <= 2 and statuses.count(429) >= 4, statuses
    wait_for(lambda: ModelCall.objects.count() == 6, timeout=20, what="the records")
    spent = sum(g.spent_usd for g in ModelGrant.objects.filter(campaign_id=7))
    assert spent == sum(c.cost_usd for c in ModelCall.objects.all()) <= Decimal("0.36")


def test_a_non_ascii_header_is_refused_before_the_call_is_counted(admin_user, fake, gateway):
    """A header value the gateway cannot forward (`X-Title: caf\\xe9`) failed after admission
    with a 500 and kept the call's reservation in the grant's spend for good (no provider call,
    no record): a sandbox could use up its campaign's budget that way. Now it is a 400 naming
    the header, before anything is counted."""
    _provider(admin_user, fake.base_url)
    grant, token = _grant(campaign_budget_usd=100)
    body = {"model": "fake-model", "messages": []}
    status, data = _raw(
        gateway, "POST", "/v1/chat/completions", token, body, extra=b"X-Title: caf\xe9\r\n"
    )
    assert status == 400, data
    assert "X-Title" in json.loads(data)["error"]["message"]
    grant.refresh_from_db()
    assert (grant.calls, grant.spent_usd) == (0, 0)
    assert fake.requests == []


def test_a_call_that_fails_after_admission_gives_back_its_reservation(admin_user, fake, gateway):
    """The provider's key cannot be decrypted (a rotated secret key): the call fails after
    admission. Its reservation was kept in the spend for good; now the call is recorded as
    an error and the spend is what the calls cost (nothing)."""
    provider = _provider(admin_user, fake.base_url)
    type(provider).objects.filter(pk=provider.pk).update(key_ciphertext=b"not-a-fernet-token")
    grant, token = _grant(campaign_budget_usd=100)
    body = {"model": "fake-model", "messages": []}
    status, data = _raw(gateway, "POST", "/v1/chat/completions", token, body)
    assert status == 500, data
    wait_for(lambda: ModelCall.objects.exists(), timeout=10, what="the failed call's record")
    call = ModelCall.objects.get()
    assert call.status_code == 500 and "InvalidToken" in call.error
    grant.refresh_from_db()
    assert (grant.calls, grant.spent_usd) == (1, 0)
    assert fake.requests == []


def test_a_provider_header_outside_latin1_does_not_lose_the_answer(admin_user, gateway):
    """A provider header in UTF-8 (an arrow) made writing the answer's head fail: a 500, the
    provider's charge unrecorded and the reservation kept. The header bytes now pass as sent."""
    with FakeModelServer(headers=(("X-Note", "\xe2\x86\x92"),)) as server:
        _provider(admin_user, server.base_url)
        grant, token = _grant(campaign_budget_usd=100)
        status, _data = _post(gateway, "/v1/chat/completions", token, {"model": "fake-model"})
    assert status == 200
    grant.refresh_from_db()
    assert str(grant.spent_usd) == "0.180000" == str(ModelCall.objects.get().cost_usd)


def _stalled_call(gateway, token, body) -> socket.socket:
    """A call whose client never reads its answer (a small receive buffer fills at once)."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.connect(("127.0.0.1", gateway.tcp_port))
    data = json.dumps(body).encode()
    conn.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return conn


def test_an_agent_that_stops_reading_holds_neither_its_grant_nor_its_answer(
    admin_user, gateway, monkeypatch
):
    """A budgeted grant's calls took turns and the turn was held for the whole answer with no
    limit on the writes: an agent that stopped reading blocked its grant's every other call
    until its sandbox died. Now the other calls run beside it, and the stalled call is given
    up after the write timeout (the rest is read for its usage, recorded and charged)."""
    monkeypatch.setattr("agents.gateway.WRITE_TIMEOUT_S", 2.0, raising=False)
    big = "x" * (16 * 1024 * 1024)
    with FakeModelServer(script=lambda r: big if r.get("big") else "small") as server:
        _provider(admin_user, server.base_url)
        grant, token = _grant(budget_usd=100)
        body = {"model": "fake-model", "messages": [], "max_tokens": 100}
        stalled = _stalled_call(gateway, token, {**body, "big": True})
        try:
            wait_for(lambda: server.requests, timeout=10, what="the stalled call upstream")
            status, data = _raw(gateway, "POST", "/v1/chat/completions", token, body, timeout=10)
            assert status == 200 and b"small" in data
            wait_for(
                lambda: ModelCall.objects.filter(error__contains="stopped reading").exists(),
                timeout=20,
                what="the stalled call's record",
            )
        finally:
            stalled.close()
    wait_for(lambda: ModelCall.objects.count() == 2, timeout=10, what="both records")
    grant.refresh_from_db()
    assert grant.calls == 2 and str(grant.spent_usd) == "0.360000"


def test_a_budget_held_only_by_calls_in_flight_is_not_exhausted(admin_user, gateway):
    """A 429 caused only by other variants' reservations marked the grant's campaign budget
    exhausted for good (its variant then ended as failed). Now it is a 429 `budget_held` the
    agent may retry, without the mark; once the budget is really spent, it is marked."""
    with FakeModelServer(first_token_delay_s=1.5) as server:
        _provider(admin_user, server.base_url)
        _first, token_a = _grant(variant_id=20, campaign_budget_usd=0.25)
        second, token_b = _grant(variant_id=21, campaign_budget_usd=0.25)
        body = {"model": "fake-model", "messages": [], "stream": True}  # reserves 8192 out
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_raw, gateway, "POST", "/v1/chat/completions", token_a, body)
            wait_for(lambda: server.requests, timeout=10, what="the first call upstream")
            status, data = _raw(gateway, "POST", "/v1/chat/completions", token_b, body)
            assert status == 429, data
            error = json.loads(data)["error"]
            assert error["type"] == "budget_held" and "in flight" in error["message"]
            assert in_flight.result()[0] == 200
        wait_for(lambda: ModelCall.objects.count() == 2, timeout=10, what="the records")
        second.refresh_from_db()
        assert second.exhausted == ""
        # The retry goes through ($0.18 spent of $0.25), and then the budget is spent.
        assert _raw(gateway, "POST", "/v1/chat/completions", token_b, body)[0] == 200
        wait_for(lambda: ModelCall.objects.count() == 3, timeout=10, what="the records")
        status, data = _raw(gateway, "POST", "/v1/chat/completions", token_b, body)
    assert status == 429 and json.loads(data)["error"]["type"] == "budget_exhausted"
    second.refresh_from_db()
    assert second.exhausted == "campaign"


@pytest.mark.shapes("production")
def test_admission_does_not_wait_for_the_campaigns_other_grants(admin_user, fake, gateway):
    """Admission under a campaign budget locked every grant the campaign ever had: a
    transaction holding any one of them (a revocation, a record) stalled every call of the
    campaign. Now admissions take turns on one lock of their own."""
    _provider(admin_user, fake.base_url)
    old, _token = _grant(variant_id=20, campaign_budget_usd=100)
    _grant_row, token = _grant(variant_id=21, campaign_budget_usd=100)
    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                ModelGrant.objects.select_for_update().get(pk=old.pk)
                held.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        body = {"model": "fake-model", "messages": []}
        status, _data = _raw(gateway, "POST", "/v1/chat/completions", token, body, timeout=10)
        assert status == 200
    finally:
        release.set()
        holder.join()


_MCP = {"type": "mcp", "server_label": "x", "server_url": "https://attacker.example/mcp"}
_REFUSED_BODIES = [
    # OpenAI: tools the provider runs (remote MCP reaches any URL), state and fetches.
    ("openai", "/v1/responses", {"tools": [{**_MCP, "require_approval": "never"}]}, "tool"),
    ("openai", "/v1/responses", {"tools": [{"type": "web_search_preview"}]}, "tool"),
    ("openai", "/v1/responses", {"tools": [{"type": "code_interpreter"}]}, "tool"),
    ("openai", "/v1/responses", {"tools": [{"type": "file_search"}]}, "tool"),
    ("openai", "/v1/responses", {"tools": [{"type": "image_generation"}]}, "tool"),
    ("openai", "/v1/responses", {"tools": [{"type": "shell"}]}, "tool"),
    (
        "openai",
        "/v1/responses",
        {"tools": [{"type": "shell", "environment": {"type": "container_auto"}}]},
        "tool",
    ),
    ("openai", "/v1/chat/completions", {"tools": [{"type": "computer_use_preview"}]}, "tool"),
    ("openai", "/v1/responses", {"background": True}, "parameter"),
    ("openai", "/v1/responses", {"conversation": "conv_123"}, "parameter"),
    ("openai", "/v1/responses", {"prompt": {"id": "pmpt_123"}}, "parameter"),
    # A stored response or item, perhaps another campaign's: Convoy's own are never stored.
    ("openai", "/v1/responses", {"previous_response_id": "resp_123"}, "parameter"),
    (
        "openai",
        "/v1/responses",
        {"input": [{"type": "item_reference", "id": "msg_1"}]},
        "parameter",
    ),
    ("openai", "/v1/responses", {"input": ["hi", {"id": "msg_1"}]}, "parameter"),
    ("openai", "/v1/chat/completions", {"web_search_options": {}}, "parameter"),
    # Files, images and reasoning the provider stored, named by id: another caller's, perhaps.
    (
        "openai",
        "/v1/responses",
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
        "parameter",
    ),
    (
        "openai",
        "/v1/responses",
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
        "parameter",
    ),
    (
        "openai",
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
            ]
        },
        "parameter",
    ),
    ("openai", "/v1/responses", {"input": [{"type": "reasoning", "id": "rs_1"}]}, "parameter"),
    (
        "openai",
        "/v1/responses",
        {"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]},
        "parameter",
    ),
    (
        "anthropic",
        "/v1/messages",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "file", "file_id": "file_1"}}
                    ],
                }
            ]
        },
        "parameter",
    ),
    (
        "openai",
        "/v1/chat/completions",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://attacker.example/x"}}
                    ],
                }
            ]
        },
        "url",
    ),
    (
        "openai",
        "/v1/responses",
        {
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_file", "file_url": "https://attacker.example/f"}],
                }
            ]
        },
        "url",
    ),
    # Anthropic: the MCP connector, server tools, containers and URL sources.
    (
        "anthropic",
        "/v1/messages",
        {"mcp_servers": [{"type": "url", "url": "https://attacker.example/mcp", "name": "x"}]},
        "parameter",
    ),
    ("anthropic", "/v1/messages", {"tools": [{"type": "web_fetch_20250910"}]}, "tool"),
    ("anthropic", "/v1/messages", {"tools": [{"type": "web_search_20250305"}]}, "tool"),
    ("anthropic", "/v1/messages", {"tools": [{"type": "code_execution_20250825"}]}, "tool"),
    ("anthropic", "/v1/messages", {"tools": [{"type": "mcp_toolset"}]}, "tool"),
    ("anthropic", "/v1/messages", {"container": "container_123"}, "parameter"),
    (
        "anthropic",
        "/v1/messages",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {"type": "url", "url": "https://attacker.example/"},
                                }
                            ],
                        }
                    ],
                }
            ]
        },
        "url",
    ),
    ("anthropic", "/v1/messages/count_tokens", {"mcp_servers": []}, "parameter"),
]


@pytest.mark.parametrize(("style", "path", "extra", "refused"), _REFUSED_BODIES)
def test_tools_and_fetches_the_provider_would_run_are_refused(
    admin_user, fake, gateway, style, path, extra, refused
):
    """The gateway checked only `model` and `stream`: a sandbox could have the provider run a
    remote MCP server, fetch a page or run code, reaching any URL outside its egress policy
    (and billed outside tokens). Now only tools the agent runs itself pass; the rest is a 403
    recorded and audited, and the provider sees nothing."""
    _provider(admin_user, fake.base_url, api_style=style)
    grant, token = _grant()
    body = {"model": "fake-model", "max_tokens": 10, "messages": [], **extra}
    beta = b"anthropic-beta: mcp-client-2025-04-04,web-fetch-2025-09-10\r\n"
    status, data = _raw(gateway, "POST", path, token, body, extra=beta)
    assert status == 403, data
    assert json.loads(data)["error"]["type"] == f"{refused}_not_allowed"
    assert fake.requests == []
    wait_for(lambda: ModelCall.objects.exists(), timeout=10, what="the refusal's record")
    call = ModelCall.objects.get()
    assert (call.outcome, call.status_code) == (CallOutcome.REFUSED, 403)
    event = json.loads(AuditEvent.objects.get(action="agents.model.called").body)
    assert event["payload"]["status"] == 403 and event["outcome"] == "denied"
    grant.refresh_from_db()
    assert (grant.calls, grant.spent_usd) == (0, 0)


@pytest.mark.parametrize(
    ("style", "path", "extra"),
    [
        ("openai", "/v1/chat/completions", {"tools": [{"type": "function", "function": {}}]}),
        (
            "openai",
            "/v1/responses",
            {
                "tools": [
                    {"type": "custom", "name": "apply_patch"},
                    {"type": "apply_patch"},
                    {"type": "local_shell"},
                    {"type": "shell", "environment": {"type": "local"}},
                ]
            },
        ),
        (
            "openai",
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}
                        ],
                    }
                ]
            },
        ),
        (
            "anthropic",
            "/v1/messages",
            {
                "tools": [
                    {"name": "run", "input_schema": {"type": "object"}},
                    {"type": "custom", "name": "x", "input_schema": {"type": "object"}},
                    {"type": "bash_20250124", "name": "bash"},
                    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
                ],
                # A tool call's input is the agent's own data, even when it names a URL.
                "messages": [
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "tool_use",
                                "id": "t1",
                                "name": "fetch",
                                "input": {"source": {"type": "url", "url": "https://x.example"}},
                            }
                        ],
                    }
                ],
            },
        ),
        # Content sent whole: a file inline, a reasoning item with its encrypted content.
        (
            "openai",
            "/v1/responses",
            {
                "input": [
                    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "e"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_file", "filename": "a.txt", "file_data": "data:,x"}
                        ],
                    },
                ]
            },
        ),
    ],
)
def test_tools_the_agent_runs_itself_pass(admin_user, fake, gateway, style, path, extra):
    _provider(admin_user, fake.base_url, api_style=style)
    _grant_row, token = _grant()
    body = {"model": "fake-model", "max_tokens": 10, "messages": [], **extra}
    status, data = _raw(gateway, "POST", path, token, body)
    assert status == 200, data
    pinned = {"store": False} if path == "/v1/responses" else {}  # call_body_pin
    assert fake.requests[-1]["body"] == {**body, **pinned}


def test_only_allowed_headers_and_betas_reach_the_provider(admin_user, fake, gateway):
    """Every header but a few was forwarded: `OpenAI-Organization` billed another account and
    `anthropic-beta` switched on the MCP connector and web fetch. Now only an allowlist of
    headers passes, and only anthropic-beta features that run on the model."""
    _provider(admin_user, fake.base_url, api_style="anthropic")
    _grant_row, token = _grant()
    extra = (
        b"OpenAI-Organization: org-other\r\nOpenAI-Project: proj-other\r\nX-Anything: 1\r\n"
        b"User-Agent: agent/1.0\r\nanthropic-version: 2023-06-01\r\n"
        b"anthropic-beta: mcp-client-2025-04-04, interleaved-thinking-2025-05-14,"
        b"web-fetch-2025-09-10,files-api-2025-04-14,claude-code-20250219\r\n"
    )
    body = {"model": "fake-model", "max_tokens": 10, "messages": []}
    status, data = _raw(gateway, "POST", "/v1/messages", token, body, extra=extra)
    assert status == 200, data
    seen = {k.lower(): v for k, v in fake.requests[-1]["headers"].items()}
    assert seen["anthropic-beta"] == "interleaved-thinking-2025-05-14,claude-code-20250219"
    assert seen["user-agent"] == "agent/1.0" and seen["anthropic-version"] == "2023-06-01"
    for name in ("openai-organization", "openai-project", "x-anything", "authorization"):
        assert name not in seen
    assert seen["x-api-key"] == REAL_KEY


def test_messages_too_deep_to_check_are_refused(admin_user, fake, gateway):
    """The check for URLs walks the messages; one nested past its depth is refused, not let
    through unchecked."""
    _provider(admin_user, fake.base_url, api_style="anthropic")
    _grant_row, token = _grant()
    deep = {"type": "image", "source": {"type": "url", "url": "https://attacker.example/"}}
    for _ in range(70):
        deep = {"type": "tool_result", "content": [deep]}
    body = {
        "model": "fake-model",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [deep]}],
    }
    status, data = _raw(gateway, "POST", "/v1/messages", token, body)
    assert status == 400 and "nested too deep" in json.loads(data)["error"]["message"], data
    assert fake.requests == []


@pytest.mark.parametrize("n", [9, 128, 0, "2", True])
def test_more_completions_than_the_cap_are_refused_naming_n(admin_user, fake, gateway, n):
    _provider(admin_user, fake.base_url)
    _grant_row, token = _grant()
    body = {"model": "fake-model", "messages": [], "n": n}
    status, data = _raw(gateway, "POST", "/v1/chat/completions", token, body)
    assert status == 400, data
    assert "`n`" in json.loads(data)["error"]["message"]
    assert fake.requests == []
    wait_for(lambda: ModelCall.objects.exists(), timeout=10, what="the refusal's record")
    assert ModelCall.objects.get().outcome == CallOutcome.REFUSED


def test_parallel_calls_with_many_choices_do_not_overrun_the_budget(admin_user, gateway):
    """A call's reservation counted `max_tokens` once whatever its `n`: ten calls at once with
    n=8 were admitted five at a time against $1.00 (each may cost $1.60). Now each holds
    max_tokens x n: one is admitted, the others are told the budget is held."""
    with FakeModelServer(first_token_delay_s=1.0) as server:
        _provider(admin_user, server.base_url)
        grant, token = _grant(budget_usd=1.0)
        body = {"model": "fake-model", "messages": [], "stream": True, "max_tokens": 100, "n": 8}
        answers = _parallel(
            10, lambda i: _raw(gateway, "POST", "/v1/chat/completions", token, body)
        )
    statuses = [status for status, _data in answers]
    # A second one only if the first had ended (and cost $0.18) before it was admitted.
    assert 1 <= statuses.count(200) <= 2 and statuses.count(429) >= 8, statuses
    wait_for(lambda: ModelCall.objects.count() == 10, timeout=20, what="the records")
    grant.refresh_from_db()
    assert grant.spent_usd == Decimal("0.18") * statuses.count(200)


def test_a_free_endpoints_request_is_not_kept(admin_user, fake, gateway):
    """count_tokens costs nothing, yet its request (up to the body limit) was stored in every
    call's transcript: a sandbox could fill the database for free. Its request is not kept."""
    _provider(admin_user, fake.base_url, api_style="anthropic")
    _grant_row, token = _grant()
    text = "count me " * 1000
    body = {"model": "fake-model", "messages": [{"role": "user", "content": text}]}
    status, _data = _raw(gateway, "POST", "/v1/messages/count_tokens", token, body)
    assert status == 200
    wait_for(lambda: ModelCall.objects.exists(), timeout=10, what="the call's record")
    (record,) = variant_transcript(variant_id=9)
    assert "count_tokens" in record["path"]
    assert "count me" not in json.dumps(record) and record["request"] in ("", None)


@pytest.mark.parametrize(
    ("path", "asked", "sent"),
    [
        ("/v1/responses", {}, False),  # /responses stores unless told not to
        ("/v1/responses", {"store": True}, False),
        ("/v1/chat/completions", {"store": True}, False),
        ("/v1/chat/completions", {}, None),  # not stored by default: the field is not added
    ],
)
def test_the_provider_is_always_told_not_to_store_the_call(
    admin_user, fake, gateway, path, asked, sent
):
    """`store` was forwarded, and `/responses` stores by default: the provider kept every
    conversation under the project's key, outside the audit trail and readable by anyone else
    holding the key. The provider now always gets `store: false`, and the transcript says so."""
    _provider(admin_user, fake.base_url)
    _grant_row, token = _grant()
    body = {"model": "fake-model", "input": "hi", "messages": [], **asked}
    status, _data = _post(gateway, path, token, body)
    assert status == 200
    seen = fake.requests[-1]["body"]
    assert seen.get("store") is sent and ("store" in seen) == (sent is not None)
    (record,) = variant_transcript(variant_id=9)
    assert record["request"].get("store") is sent
