"""fake_model_server: a scripted stand-in for a model provider on 127.0.0.1 (never a real one).

Speaks OpenAI chat completions and Anthropic messages, streaming (SSE) and not. Each answer's
text comes from `script(request_json) -> str` (default: the edit that turns `assertEquals(`
into `assertEqual(` in test_calc.py, then "DONE"). Records every request's headers and body so
tests can check what reached the "provider" (the real key, never the sandbox's token).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EDIT = {"path": "test_calc.py", "old": "assertEquals(", "new": "assertEqual("}
USAGE = {"prompt_tokens": 120, "completion_tokens": 30}


def default_script(request: dict) -> str:
    """First turn: the edit (as JSON); once the agent reports it applied: DONE."""
    messages = request.get("messages") or []
    last = messages[-1].get("content", "") if messages else ""
    return "DONE" if "applied" in str(last) else json.dumps(EDIT)


MINI_STEPS = (
    "sed -i 's/assertEquals(/assertEqual(/' test_calc.py",
    "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT",
)


def mini_script(request: dict) -> dict:
    """For mini-swe-agent (v2, a bash tool): the sed that makes the known change, then the
    command that ends its run. Returns a tool call, not text."""
    done = sum(1 for m in request.get("messages") or [] if m.get("role") == "tool")
    return {"tool_call": MINI_STEPS[min(done, len(MINI_STEPS) - 1)]}


class FakeModelServer:
    def __init__(
        self,
        *,
        script: Callable[[dict], str | dict] = default_script,
        chunk_delay_s: float = 0.0,
        first_token_delay_s: float = 0.0,
        usage: bool = True,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.script = script
        self.usage = usage  # False: answers carry no usage (as some compatible servers do)
        self.chunk_delay_s = chunk_delay_s
        # Extra headers on every answer; a str value is sent as its latin-1 bytes, so
        # "\xe2\x86\x92" is the UTF-8 of an arrow.
        self.headers = headers
        self.first_token_delay_s = first_token_delay_s
        self.requests: list[dict] = []
        self.first_token_sent: list[float] = []  # time.monotonic() when each first chunk left
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # As real servers do: without it a kept-alive connection (httpx's pool) waits on
            # delayed ACKs between the head and the body (~40 ms on Linux).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                    )
                text = server.script(body)
                anthropic = self.path.endswith("/messages")
                if body.get("stream"):
                    self._stream(text, body, anthropic)
                else:
                    self._json(text, anthropic)

            def _json(self, text, anthropic):  # text: a str, or {"tool_call": command}
                if anthropic:
                    data = {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "text", "text": text}],
                        "usage": {"input_tokens": 120, "output_tokens": 30},
                    }
                else:
                    message = {"role": "assistant", "content": text}
                    if isinstance(text, dict):  # a tool call (the bash tool's command)
                        arguments = json.dumps({"command": text["tool_call"]})
                        message = {
                            "role": "assistant",
                            "content": "Running a command.",
                            "tool_calls": [
                                {
                                    "id": f"call_{len(server.requests)}",
                                    "type": "function",
                                    "function": {"name": "bash", "arguments": arguments},
                                }
                            ],
                        }
                    data = {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": "fake-model",
                        "choices": [
                            {
                                "index": 0,
                                "message": message,
                                "finish_reason": "tool_calls"
                                if "tool_calls" in message
                                else "stop",
                            }
                        ],
                        "usage": {**USAGE, "total_tokens": 150},
                    }
                if not server.usage:
                    data.pop("usage")
                out = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                for name, value in server.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(out)

            def _event(self, data: dict, event: str | None = None) -> None:
                line = (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"
                payload = line.encode()
                self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                self.wfile.flush()

            def _stream(self, text, body, anthropic):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if server.first_token_delay_s:
                    time.sleep(server.first_token_delay_s)
                pieces = [text[i : i + 16] for i in range(0, len(text), 16)] or [""]
                for i, piece in enumerate(pieces):
                    if i == 0:
                        with server._lock:
                            server.first_token_sent.append(time.monotonic())
                    elif server.chunk_delay_s:
                        time.sleep(server.chunk_delay_s)
                    if anthropic:
                        self._event(
                            {
                                "type": "content_block_delta",
                                "index": 0,
                                "delta": {"type": "text_delta", "text": piece},
                            },
                            "content_block_delta",
                        )
                    else:
                        self._event(
                            {
                                "id": "chatcmpl-fake",
                                "object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": {"content": piece}}],
                            }
                        )
                if anthropic and server.usage:
                    self._event(
                        {"type": "message_delta", "usage": {"output_tokens": 30}}, "message_delta"
                    )
                if anthropic:
                    self._event({"type": "message_stop"}, "message_stop")
                else:
                    if server.usage and (body.get("stream_options") or {}).get("include_usage"):
                        self._event({"id": "chatcmpl-fake", "choices": [], "usage": USAGE})
                    self.wfile.write(b"e\r\ndata: [DONE]\n\n\r\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
