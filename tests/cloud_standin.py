"""A STAND-IN for a cloud LLM API, for tests and benches only: an OpenAI-compatible server on loopback that
answers every chat completion with a fixed text (or a stream of it), counts what it served and which
`Authorization` headers it saw, and can be told to fail. It is not a model and not a cloud.

    python -m tests.cloud_standin PORT

GET /count -> {"served": n, "requests": n, "auth": [...]}; POST /control {"mode": "ok" | "429" | "500" |
"timeout", "delay_s": 0.0} changes how later requests are answered ("timeout" holds each request for
`delay_s`, 30 s by default, then drops it).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE: dict = {"served": 0, "requests": 0, "auth": [], "mode": "ok", "delay_s": 0.0}
LOCK = threading.Lock()
TEXT = "[cloud stand-in] answered"


class StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # /count for the test, /v1/models for clients
        with LOCK:
            body = {k: STATE[k] for k in ("served", "requests", "auth", "mode")} if self.path == "/count" else {"data": [{"id": "stand-in"}]}
        self._send(200, body)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/control":
            with LOCK:
                STATE["mode"], STATE["delay_s"] = request.get("mode", "ok"), float(request.get("delay_s", 0.0))
            self._send(200, {"mode": STATE["mode"]})
            return
        with LOCK:
            STATE["requests"] += 1
            auth = self.headers.get("authorization", "")
            if auth not in STATE["auth"]:
                STATE["auth"].append(auth)
            mode, delay = STATE["mode"], STATE["delay_s"]
        if delay and mode != "timeout":
            time.sleep(delay)
        if mode == "timeout":
            time.sleep(delay or 30.0)
            self.close_connection = True
            return
        if mode in ("429", "500"):
            self._send(int(mode), {"error": {"message": f"stand-in says {mode}", "type": "server_error", "code": mode}})
            return
        with LOCK:
            STATE["served"] += 1
            n = STATE["served"]
        if request.get("stream"):
            self._stream(n, request.get("model", "stand-in"))
            return
        self._send(200, {
            "id": f"standin-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model", "stand-in"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": TEXT}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        })

    def _stream(self, n: int, model: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        words = TEXT.split(" ")
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word if i == 0 else " " + word}
            chunk = {"id": f"standin-{n}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if i == len(words) - 1 else None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        return None


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), StandIn)
    server.daemon_threads = True
    server.serve_forever()
