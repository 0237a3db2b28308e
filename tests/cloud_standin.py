"""A STAND-IN for a cloud LLM API, for tests only: an OpenAI-compatible server on loopback that answers
every chat completion with a fixed text and counts what it served. It is not a model and not a cloud.

    python -m tests.cloud_standin PORT
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVED = {"count": 0}


class StandIn(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # /count for the test, /v1/models for clients
        body = {"served": SERVED["count"]} if self.path == "/count" else {"data": [{"id": "stand-in"}]}
        self._send(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        SERVED["count"] += 1
        self._send({
            "id": f"standin-{SERVED['count']}", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model", "stand-in"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "[cloud stand-in] answered"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        })

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        return None


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), StandIn).serve_forever()
