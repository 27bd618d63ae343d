"""Runs INSIDE a sandbox (system python3, no Convoy imports): starts the relay, then reports as
JSON what reaches out and what does not. argv: upstream_port relay_port."""

import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.request

upstream_port, relay_port = int(sys.argv[1]), int(sys.argv[2])
relay = subprocess.Popen(
    ["/convoy/bin/relay", "/convoy/egress/proxy.sock", str(relay_port)],
    stdout=subprocess.PIPE,
    text=True,
)
ready = relay.stdout.readline().strip()
proxy = f"http://127.0.0.1:{relay_port}"
out = {"relay": ready}
os.environ.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, NO_PROXY="localhost")

ctx = ssl.create_default_context(cafile="/convoy/certs/cert.pem")
url = f"https://api.test:{upstream_port}/hello"
with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
    out["urllib"] = r.read().decode()

curl = subprocess.run(
    [
        "curl",
        "-sS",
        "--cacert",
        "/convoy/certs/cert.pem",
        f"https://api.test:{upstream_port}/hello",
    ],
    capture_output=True,
    text=True,
)
out["curl"] = curl.stdout or curl.stderr

out["direct"] = {}
for port in (5432, 6379, upstream_port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        out["direct"][port] = "connected"
    except OSError as e:
        out["direct"][port] = type(e).__name__

try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"\0" * 12, ("192.0.2.53", 53))
    out["udp"] = "sent"
except OSError as e:
    out["udp"] = type(e).__name__

out["connect"] = {}
for target in ("127.0.0.1:5432", "169.254.169.254:80", "internal.test:443", "other.test:443"):
    s = socket.create_connection(("127.0.0.1", relay_port), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    status = data.split(b"\r\n", 1)[0].decode()
    out["connect"][target] = [status, data.partition(b"\r\n\r\n")[2].decode().strip()]

relay.terminate()
out["relay_exit"] = relay.wait(timeout=10)
print(json.dumps(out))
