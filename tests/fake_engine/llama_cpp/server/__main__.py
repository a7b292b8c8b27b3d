"""`python -m llama_cpp.server --host H --port P ...`: answers completions until the Nth, then dies by SIGILL."""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llama_cpp import die_like_a_foreign_build

CRASH_ON = int(os.environ.get("FAKE_ENGINE_CRASH_ON", "1"))
seen = 0


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        global seen
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen += 1
        if seen >= CRASH_ON:
            die_like_a_foreign_build()
        body = json.dumps(
            {
                "id": "x",
                "object": "text_completion",
                "created": int(time.time()),
                "model": "local",
                "choices": [{"index": 0, "text": " Paris", "finish_reason": "length", "logprobs": None}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8000)
args, _ = parser.parse_known_args()
ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
