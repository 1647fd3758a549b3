"""The fake upstream of bench/abuse.py: a PEP 691 index with one page answered at once and slow
pages held back."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time

from abuse_clients import FRESH_PREFIX, JSON_TYPE, SLOW_PREFIX
from harness.upstream import FakeUpstream, QuietHandler

DEMO_SDIST = b"demo 1.0: not a real sdist, only its hash matters\n"


class Upstream(FakeUpstream):
    """The fake PEP 691 index: ``demo`` at once, ``slowpoke*`` after ``delay`` s (or at once
    after :meth:`release`), anything else 404; every request logged."""

    request_queue_size = 256  # serve opens up to 32 page connections at once

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.released = threading.Event()
        self.in_flight = 0  # delayed requests being held
        self.peak_in_flight = 0
        self.demo_sha = hashlib.sha256(DEMO_SDIST).hexdigest()
        super().__init__(_UpstreamHandler)

    def __exit__(self, *exc: object) -> None:
        self.released.set()  # no handler thread sleeps past the end
        super().__exit__(*exc)

    def page(self, name: str) -> bytes:
        return json.dumps({
            "meta": {"api-version": "1.0"}, "name": name,
            "files": [{"filename": f"{name}-1.0.tar.gz",
                       "url": f"{self.url}/packages/{name}-1.0.tar.gz",
                       "hashes": {"sha256": self.demo_sha}}]}).encode()

    def mark(self) -> int:
        with self.lock:
            self.peak_in_flight = self.in_flight
            return len(self.requests)

    def hold(self, delta: int) -> None:
        with self.lock:
            self.in_flight += delta
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)


class _UpstreamHandler(QuietHandler):
    protocol_version = "HTTP/1.1"
    #: head and body go out in two writes: without TCP_NODELAY the body waits for serve's
    #: delayed ACK (~40 ms per uncached page)
    disable_nagle_algorithm = True
    server: Upstream

    def do_GET(self) -> None:
        t0 = time.monotonic()
        up = self.server
        path = self.path.split("?", 1)[0]
        m = re.fullmatch(r"/simple/([^/]+)/", path)
        name = m.group(1) if m else None
        delayed = 0.0
        if name is not None and name.startswith(SLOW_PREFIX) and not up.released.is_set():
            up.hold(+1)
            try:
                up.released.wait(up.delay)
            finally:
                up.hold(-1)
            delayed = time.monotonic() - t0
        if name == "demo" or (name or "").startswith((SLOW_PREFIX, FRESH_PREFIX)):
            body, ctype, status = up.page(name or ""), JSON_TYPE, 200
        elif path == "/packages/demo-1.0.tar.gz":
            body, ctype, status = DEMO_SDIST, "application/octet-stream", 200
        else:
            body, ctype, status = b"not found\n", "text/plain", 404
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if status == 200 and self.headers.get("If-None-Match") == etag:
            status, body = 304, b""
        sent = True
        try:
            self.send_body(status, body, ctype, {"ETag": etag} if status in (200, 304) else None)
        except OSError:  # serve closed the connection meanwhile
            sent = False
            self.close_connection = True
        up.record(name=name, path=path, status=status, t0=t0, t1=time.monotonic(),
                  delayed=round(delayed, 3), sent=sent, accept=self.headers.get("Accept", ""))
