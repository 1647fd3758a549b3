"""The HTTP side: one :class:`tests.servers.StoppableHTTPServer` per origin, and the handler
that records each request, asks the fake for the answer and writes it."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tests.fakegithub.faults import RecordedRequest
from tests.servers import StoppableHTTPServer

if TYPE_CHECKING:
    from tests.fakegithub.core import FakeGitHub

_CHUNK = 256 * 1024


@dataclass
class _Blob:
    data: bytes
    etag: str
    last_modified: str


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    abort_after: int | None = None  # close the connection after this many body bytes


class _Server(StoppableHTTPServer):
    """One origin of the fake (``api``, ``web`` or ``objects``)."""

    fake: FakeGitHub
    origin: str

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # aborted/torn-down connections are expected; keep test output clean


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def version_string(self) -> str:
        if self.server.origin == "objects":
            return "Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0"
        return "GitHub.com"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        split = urlsplit(self.path)
        rec = RecordedRequest(
            origin=self.server.origin,
            method=self.command,
            path=split.path,
            query=split.query,
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        fake = self.server.fake
        resp = fake._respond(rec)
        rec.status = resp.status
        fake._record(rec)
        try:
            self._write(resp, rec)
        except OSError:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _write(self, resp: _Response, rec: RecordedRequest) -> None:
        self.send_response(resp.status)
        no_body = self.command == "HEAD" or resp.status in (204, 304)
        names = {k.lower() for k, _ in resp.headers}
        for name, value in resp.headers:
            self.send_header(name, value)
        if "content-length" not in names and resp.status not in (204, 304):
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if no_body:
            return
        body = memoryview(resp.body)
        limit = len(body) if resp.abort_after is None else min(resp.abort_after, len(body))
        for start in range(0, limit, _CHUNK):
            chunk = body[start:min(start + _CHUNK, limit)]
            rec.bytes_sent += len(chunk)
            try:
                self.wfile.write(chunk)
            except OSError:
                rec.bytes_sent -= len(chunk)
                raise
        if limit < len(body):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
