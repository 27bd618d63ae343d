"""Model gateway: time to first token and per-call overhead through the gateway vs calling the
(fake) provider directly.

    .venv/bin/python benchmarks/model_gateway.py [--calls 200] [--streams 100]

The provider is tests/agents/fake_model_server.py in its own process (so it does not share a
GIL with the gateway), streaming its first chunk 20 ms after the request and the rest 5 ms
apart. The baseline, measured in the same run, is the same raw HTTP/1.1 client calling the fake
directly. Through the gateway: the same client → the gateway's TCP listener (token check,
budget, key swap, forward with httpx, usage read, ModelCall + audit event written before the
answer ends), and → the egress proxy's per-sandbox socket → route → the gateway's UNIX socket
(the host side of a sandbox's path; the in-sandbox relay adds ~1 ms, see the egress section).
Production shape: a throwaway PostgreSQL database (benchmarks/campaign_support.py).
Targets: first token within 50 ms of the direct path; overhead per call p50 <= 5 ms.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def serve_fake(first_token_ms: float, chunk_ms: float) -> None:
    from tests.agents.fake_model_server import FakeModelServer

    text = "x" * 16 * 20  # 20 chunks
    server = FakeModelServer(
        script=lambda _request: text,
        first_token_delay_s=first_token_ms / 1000,
        chunk_delay_s=chunk_ms / 1000,
    )
    server.__enter__()
    print(server.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin


def _request(path: str, token: str, body: dict, *, host: str, absolute: bool = False) -> bytes:
    data = json.dumps(body).encode()
    target = f"http://{host}{path}" if absolute else path
    return (
        f"POST {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + data


def _call(connect, request: bytes) -> tuple[float, float, bytes]:
    """(seconds to the first content byte, seconds to the end, the whole answer)."""
    began = time.perf_counter()
    sock = connect()
    sock.sendall(request)
    chunks, first, seen = [], None, b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if first is None:
            seen += chunk
            if b'"content"' in seen.partition(b"\r\n\r\n")[2]:
                first = time.perf_counter() - began
    total = time.perf_counter() - began
    sock.close()
    answer = b"".join(chunks)
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"call failed: {answer[:300]!r}")
    return first if first is not None else total, total, answer


def _tcp(port: int):
    def connect():
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    return connect


def _unix(path: str):
    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s

    return connect


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        return serve_fake(20, 5)

    from cryptography.fernet import Fernet

    from benchmarks.campaign_support import convoy

    fake = subprocess.Popen(
        [sys.executable, __file__, "--serve-fake"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    fake_port = int(fake.stdout.readline())
    try:
        with convoy("model_gateway", CONVOY_SECRETS_KEY=Fernet.generate_key().decode()):
            run(args, fake_port)
    finally:
        fake.stdin.close()
        fake.wait(timeout=10)


def run(args, fake_port: int) -> None:
    from django.conf import settings

    from accounts.services import user_create
    from agents.gateway import GATEWAY_HOST, GATEWAY_RULE, model_gateway, model_gateway_stop
    from agents.grants import grant_mint
    from agents.models import ModelCall
    from agents.providers import provider_set
    from audit.models import AuditEvent
    from sandboxes.egress.policy import NetworkPolicy
    from sandboxes.egress.worker import egress_proxy, egress_proxy_stop

    admin = user_create(username="bench-admin", role="admin", password="bench-pass-1234")  # noqa: S106
    provider_set(
        name="fake",
        api_style="openai",
        base_url=f"http://127.0.0.1:{fake_port}/v1",
        key="sk-bench-real-key",
        input_usd_per_mtok="3",
        output_usd_per_mtok="15",
        actor=admin,
    )
    _grant, token = grant_mint(
        campaign_id=1, run_id=1, variant_id=1, provider_name="fake", model="fake-model"
    )
    gateway = model_gateway()
    # The benchmark's client calls the gateway directly too: open its TCP listener.
    from agents.gateway import ModelGateway

    tcp_gateway = ModelGateway(Path(settings.DATA_DIR) / "gw-bench", tcp_port=0).start()
    sock = egress_proxy().sandbox_open("bench", NetworkPolicy(rules=(GATEWAY_RULE,)))
    direct = _tcp(fake_port)
    paths = {
        "direct": (direct, "127.0.0.1", False),
        "gateway": (_tcp(tcp_gateway.tcp_port), "127.0.0.1", False),
        "via proxy": (_unix(str(sock)), GATEWAY_HOST, True),
    }
    plain = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    streamed = {**plain, "stream": True}
    try:
        for connect, host, absolute in paths.values():  # warm up every path
            for _ in range(5):
                _call(
                    connect,
                    _request("/v1/chat/completions", token, plain, host=host, absolute=absolute),
                )
        totals: dict[str, list[float]] = {n: [] for n in paths}
        for _ in range(args.calls):  # interleaved, so drift hits every path alike
            for name, (connect, host, absolute) in paths.items():
                req = _request("/v1/chat/completions", token, plain, host=host, absolute=absolute)
                totals[name].append(_call(connect, req)[1] * 1000)
        firsts: dict[str, list[float]] = {n: [] for n in paths}
        for _ in range(args.streams):
            for name, (connect, host, absolute) in paths.items():
                req = _request(
                    "/v1/chat/completions", token, streamed, host=host, absolute=absolute
                )
                first, _total, answer = _call(connect, req)
                assert answer.rstrip().endswith(b"data: [DONE]") or b"[DONE]" in answer
                firsts[name].append(first * 1000)
    finally:
        tcp_gateway.stop()  # waits for the records still being written
        model_gateway_stop()
        egress_proxy_stop()
    calls = ModelCall.objects.count()
    events = AuditEvent.objects.filter(action="agents.model.called").count()
    del gateway
    d50 = statistics.median(totals["direct"])
    print(f"non-streaming calls, {args.calls} per path (ms, p50 / p95)")
    for name in paths:
        t = totals[name]
        extra = "" if name == "direct" else f"   overhead p50 {statistics.median(t) - d50:5.2f} ms"
        print(f"  {name:10} {statistics.median(t):6.2f} / {_pct(t, 0.95):6.2f}{extra}")
    f50 = statistics.median(firsts["direct"])
    print(f"streaming: time to first token, {args.streams} per path (fake waits 20 ms; ms)")
    for name in paths:
        f = firsts[name]
        extra = "" if name == "direct" else f"   added p50 {statistics.median(f) - f50:5.2f} ms"
        print(f"  {name:10} {statistics.median(f):6.2f} / {_pct(f, 0.95):6.2f}{extra}")
    print(f"recorded: {calls} ModelCall rows, {events} audit events (gateway and via proxy)")
    print("targets: first token added <= 50 ms; overhead per call p50 <= 5 ms")
    os.environ.pop("CONVOY_SECRETS_KEY", None)


if __name__ == "__main__":
    main()
