"""A tiny coding agent (stdlib only) that tests put in a campaign's `files:`.

It asks the model (OpenAI chat completions at $OPENAI_BASE_URL with $OPENAI_API_KEY, streaming
when AGENT_STREAM=1) what to change, applies the JSON edit it answers with, tells the model it
applied it, and stops when the model says DONE. It also writes its environment into the
checkout (`agent-env.txt`), so tests can prove what a sandbox could see: the token, not the key.
"""

import json
import os
import pathlib
import sys
import urllib.error
import urllib.request

BASE = os.environ["OPENAI_BASE_URL"]
KEY = os.environ["OPENAI_API_KEY"]
MODEL = os.environ["CONVOY_MODEL"]
STREAM = os.environ.get("AGENT_STREAM") == "1"

pathlib.Path("agent-env.txt").write_text(
    "".join(f"{k}={v}\n" for k, v in sorted(os.environ.items()))
)

# A test may name the provider's own address: the sandbox must not reach it, directly or
# through the egress proxy (only the gateway, by its name).
PROBE = os.environ.get("CONVOY_PROBE_URL")
if PROBE:
    results = []
    for how, opener in (
        ("direct", urllib.request.build_opener(urllib.request.ProxyHandler({}))),
        ("proxy", urllib.request.build_opener()),  # HTTP_PROXY from the sandbox's environment
    ):
        try:
            opener.open(PROBE, timeout=10)
            results.append(f"probe {how}: reached\n")
        except (OSError, urllib.error.URLError) as e:
            results.append(f"probe {how}: blocked ({e})\n")
    pathlib.Path("agent-probe.txt").write_text("".join(results))


def ask(messages):
    body = {"model": MODEL, "messages": messages, "stream": STREAM}
    request = urllib.request.Request(  # noqa: S310 - $OPENAI_BASE_URL is http(s)
        BASE + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        response = urllib.request.urlopen(request, timeout=60)  # noqa: S310
    except urllib.error.HTTPError as e:
        print(f"model error {e.code}: {e.read().decode()}", file=sys.stderr)
        sys.exit(3)
    except urllib.error.URLError as e:
        print(f"model unreachable: {e}", file=sys.stderr)
        sys.exit(4)
    if not STREAM:
        return json.load(response)["choices"][0]["message"]["content"]
    text = ""
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


messages = [{"role": "user", "content": os.environ.get("PROMPT", "fix the deprecations")}]
for _turn in range(5):
    answer = ask(messages)
    messages.append({"role": "assistant", "content": answer})
    if answer.strip() == "DONE":
        print("agent: done")
        sys.exit(0)
    edit = json.loads(answer)
    path = pathlib.Path(edit["path"])
    path.write_text(path.read_text().replace(edit["old"], edit["new"]))
    print(f"agent: edited {path}")
    messages.append({"role": "user", "content": f"applied the edit to {path}"})
sys.exit(5)
