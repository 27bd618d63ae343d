"""Egress proxy: download throughput and connection setup through the proxy vs direct, and the
proxy's memory with 50 sandboxes open.

    .venv/bin/python benchmarks/egress_proxy.py [--mb 50] [--runs 5] [--connections 100]

The baseline, measured in the same run, is curl fetching from a loopback HTTPS server
directly. The proxied figure is the same curl with `-x http://127.0.0.1:PORT` pointed at the
in-sandbox relay (relay.c, run here on the host) → the proxy's UNIX socket → the server: the
whole path a sandbox's download takes. Targets: throughput ratio ≥ 0.8, ≤ 5 ms added per
connection (curl's time to TLS established, median). Memory: the process's RSS before and
after opening 50 sandboxes with 4 open tunnels each. The upstream runs in its own process,
so the proxy does not share a GIL with it.
"""

import argparse
import http.server
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# The loopback upstream is reachable only through the test-only name mapping, which Convoy
# accepts only in a test run: this benchmark declares itself one (it also gets a private
# DATA_DIR, var/test-<pid>, which it removes).
os.environ["PYTEST_VERSION"] = "benchmark"


class _Bytes(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    block = b"x" * (1 << 20)

    def do_GET(self):
        size = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/bytes/") else 6
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        while size > 0:
            self.wfile.write(self.block[: min(size, len(self.block))])
            size -= len(self.block)

    def log_message(self, *args):
        pass


def serve(cert: str, key: str) -> None:
    """Run the upstream HTTPS server (in its own process); print its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Bytes)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def curl(url: str, cert: Path, port: int, proxy: str | None) -> dict[str, float]:
    argv = ["curl", "-sS", "-o", "/dev/null", "--cacert", str(cert)]
    argv += ["--resolve", f"api.test:{port}:127.0.0.1"]
    argv += ["-w", "%{time_appconnect} %{time_total} %{speed_download} %{size_download}"]
    if proxy:
        argv += ["-x", proxy]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout.split()
    return {
        "appconnect": float(out[0]),
        "total": float(out[1]),
        "speed": float(out[2]),
        "size": float(out[3]),
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return

    import django

    django.setup()
    from django.conf import settings

    from sandboxes.egress.policy import Limits, network_parse
    from sandboxes.egress.proxy import EgressProxy
    from sandboxes.egress.relay import relay_binary
    from sandboxes.egress.wire import UpstreamConfig
    from tests.sandboxes.egress.conftest import cert_make

    work = Path(tempfile.mkdtemp(prefix="egb-", dir="/tmp"))
    cert, key = cert_make(work, ["api.test"])
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(cert), str(key)],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(server.stdout.readline())
    rss_before = rss_mb()
    proxy = EgressProxy(
        work / "p", upstream=UpstreamConfig(), test_hosts={"api.test": "127.0.0.1"}
    ).start()
    policy = network_parse({"allow": [f"api.test:{port}"]})
    sock = proxy.sandbox_open("bench", policy, Limits(egress_mb=100_000))
    relay = subprocess.Popen(
        [str(relay_binary()), str(sock), "0"], stdout=subprocess.PIPE, text=True
    )
    relay_port = int(relay.stdout.readline().split()[1])
    via = f"http://127.0.0.1:{relay_port}"
    try:
        size = args.mb * 1024 * 1024
        big = f"https://api.test:{port}/bytes/{size}"
        curl(big, cert, port, None)  # warm both paths
        curl(big, cert, port, via)
        direct, proxied = [], []
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            direct.append(curl(big, cert, port, None)["speed"])
            proxied.append(curl(big, cert, port, via)["speed"])
        d_mbs, p_mbs = statistics.median(direct) / 2**20, statistics.median(proxied) / 2**20
        print(f"download {args.mb} MB, median of {args.runs} (curl, loopback HTTPS upstream)")
        print(f"  direct:        {d_mbs:8.1f} MB/s")
        print(f"  through proxy: {p_mbs:8.1f} MB/s   ratio {p_mbs / d_mbs:.2f} (target >= 0.8)")

        small = f"https://api.test:{port}/hello"
        d_setup, p_setup = [], []
        for _ in range(args.connections):
            d_setup.append(curl(small, cert, port, None)["appconnect"])
            p_setup.append(curl(small, cert, port, via)["appconnect"])
        d_ms, p_ms = statistics.median(d_setup) * 1000, statistics.median(p_setup) * 1000
        p95 = sorted(p_setup)[int(0.95 * (len(p_setup) - 1))] * 1000
        print(f"connection setup to TLS established, median of {args.connections}")
        print(f"  direct:        {d_ms:6.2f} ms")
        print(f"  through proxy: {p_ms:6.2f} ms (p95 {p95:.2f} ms)")
        print(f"  added:         {p_ms - d_ms:6.2f} ms per connection (target <= 5 ms)")

        rss_one = rss_mb()
        # Tunnels that stay open: a listener that never accepts (the kernel completes the
        # connections into its backlog), so the upstream's handshakes are not what is measured.
        sink = socket.create_server(("127.0.0.1", 0), backlog=1024)
        sink_port = sink.getsockname()[1]
        policy = network_parse({"allow": [f"api.test:{sink_port}"]})
        held = []
        for i in range(50):
            path = proxy.sandbox_open(f"bench-{i}", policy, Limits())
            for _ in range(4):
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(path))
                s.sendall(f"CONNECT api.test:{sink_port} HTTP/1.1\r\n\r\n".encode())
                answer = s.recv(200)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                held.append(s)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sum(proxy.sandbox_stats(f"bench-{i}").active for i in range(50)) == 200:
                break
            time.sleep(0.05)
        rss_fifty = rss_mb()
        print("memory (this process: Django + the proxy thread)")
        print(f"  before the proxy:                     {rss_before:6.1f} MB")
        print(f"  proxy with 1 sandbox after transfers: {rss_one:6.1f} MB")
        added = rss_fifty - rss_one
        print(
            f"  50 sandboxes, 200 open tunnels:       {rss_fifty:6.1f} MB "
            f"(+{added:.1f} MB, {added * 1024 / 200:.0f} KB per tunnel)"
        )
        print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB")
        for s in held:
            s.close()
        sink.close()
    finally:
        relay.terminate()
        relay.wait()
        proxy.stop()
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
        if Path(settings.DATA_DIR).name.startswith("test-"):
            shutil.rmtree(settings.DATA_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
