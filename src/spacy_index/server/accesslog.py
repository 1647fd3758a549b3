"""The access log: one line per request, also for those the protocol answers itself."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spacy_index.http import redact_url
from spacy_index.server.logtext import escape_controls
from spacy_index.server.metrics import Metrics
from spacy_index.server.protocol import ZEROCOPY

access = logging.getLogger("spacy_index.access")

class AccessLog:
    """One line per request: method, path, status, bytes, cache hit/miss, duration."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.fast: Callable[[dict[str, Any]], Any] | None = None
        #: counts every request (server/metrics.py); None: nothing counted
        self.metrics = metrics
        #: the fast path's counters (Metrics.fast_counts, .fast_sent), updated inline in log_fast
        self._fast = metrics.fast_counts if metrics is not None else None
        self._fast_sent = metrics.fast_sent if metrics is not None else [0]

    @staticmethod
    def line(scope: Scope, status: int, sent: int, cache: str, seconds: float) -> None:
        # control characters escaped: a ``%0a`` in a path cannot forge a log line
        path = escape_controls(redact_url(scope["path"]))
        access.info("%s %s %s %dB %s %.3fs", scope["method"], path, status, sent, cache, seconds)

    def log_fast(self, scope: dict[str, Any], status: int, sent: int) -> None:
        """The line for a request the protocol answered itself (no task, so no timing)."""
        method = scope["method"]
        if method == "HEAD":
            sent = 0
        fast = self._fast
        if fast is not None:  # Metrics.count_fast, inline: a few dozen ns per page
            counts = fast.get(method)
            if counts is None:
                self.metrics.count_fast(method, status, sent)  # type: ignore[union-attr]
            else:
                counts[status] = counts.get(status, 0) + 1
                self._fast_sent[0] += sent
        if access.isEnabledFor(logging.INFO):
            self.line(scope, status, sent, "-", 0.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        sent = 0
        scope.setdefault("state", {})
        metrics = self.metrics
        flight = False  # a miss streaming from a running download (single flight)

        async def wrapped(message: Message) -> None:
            nonlocal status, sent, flight
            if message["type"] == "http.response.start":
                status = message["status"]
                if metrics is not None:
                    flight = metrics.response_started(scope)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == ZEROCOPY:  # the bytes sendfile(2) will send
                sent += int(message.get("count") or 0)
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            seconds = time.perf_counter() - start
            self.line(scope, status or 499, sent, scope["state"].get("cache", "-"), seconds)
            if metrics is not None:
                if flight:
                    metrics.response_ended()
                metrics.count(scope, status or 499, sent, seconds)
