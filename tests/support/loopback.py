"""A real HTTP server on 127.0.0.1, served from a thread: the peer for tests of the router's
HTTP clients (a worker replica, a pool router's metrics, a render worker, pictures to fetch)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that keeps the test output free of its access log."""

    def log_message(self, *_: object) -> None:
        pass


class LoopbackServer:
    """Serves `handler` on a free port until `close`; `url` is its base URL."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
