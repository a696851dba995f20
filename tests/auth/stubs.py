"""A tiny HTTP server on loopback that answers every request with a JSON document: a JWK Set,
an introspection answer, a SMART discovery document."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonServer:
    """Answers with `body` and `headers` as they are now; counts the requests (`fetches`)."""

    def __init__(self):
        self.body: dict = {}
        self.headers: dict[str, str] = {}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                outer.fetches += 1
                data = json.dumps(outer.body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                for name, value in outer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
