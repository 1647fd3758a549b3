"""The base of the benches' fake upstream indexes: a threaded HTTP server on 127.0.0.1 (a free
port) in a daemon thread, stopped on exit, that keeps a log of the requests it answered."""

from __future__ import annotations

import http.server
import sys
import threading
from typing import Any


class FakeUpstream(http.server.ThreadingHTTPServer):
    """``with FakeUpstream(Handler) as up: ... up.url``. Subclasses add what their handler
    serves; :meth:`record` / :meth:`mark` / :meth:`since` keep the request log."""

    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True, name="upstream")

    def __enter__(self) -> FakeUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(10)

    def record(self, **kw: Any) -> None:
        with self.lock:
            self.requests.append(kw)

    def mark(self) -> int:
        """The position in the log from which :meth:`since` reads."""
        with self.lock:
            return len(self.requests)

    def since(self, mark: int) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests[mark:])

    def handle_error(self, request: object, client_address: object) -> None:
        # the server under test closing a connection (keep-alive, or a fetch it gave up on)
        # is part of the benchmark, not an error worth a traceback
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that logs nothing to stderr (the server keeps its own log)."""

    def log_message(self, *args: object) -> None:
        pass

    def send_body(self, status: int, body: bytes, ctype: str | None,
                  headers: dict[str, str] | None = None) -> None:
        """One complete answer: status, Content-Type, Content-Length, ``headers``, body (none
        for HEAD)."""
        self.send_response(status)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
