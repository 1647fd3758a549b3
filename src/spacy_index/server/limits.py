"""What one client connection may take, and a clean drain at shutdown.

httptools (under uvicorn) accepts a request head of any size and a connection that never sends
one; uvicorn's own limits are the keep-alive timeout and a graceful-shutdown timeout whose
cut tasks log a traceback and answer 500. :class:`ConnectionLimits` adds, per connection, what
nginx-class servers enforce (``[limits]`` in the serve config, :class:`~.config_types.LimitsConfig`):

- the request head: ``max_header_size`` bytes in all (431), ``max_header_line`` bytes per
  header line (431), ``max_url_length`` for the request target (414), ``max_headers`` lines
  (431). The size
  is counted twice: header by header as httptools completes them, and as raw bytes arrive
  across reads, before httptools joins them, so a 128 MiB header line costs at most the
  limit plus one read (256 KiB) of memory;
- ``header_timeout``: a connection that does not finish its request head in time is closed
  (408 if it had started one), so idle and half-sent connections cannot pile up;
- ``max_connections`` (lowered to fit the open-file limit): when full, a new connection
  takes the place of the one that has waited longest with no request in flight (idle,
  silent or half-sent); only when every connection is busy does the new one get 503 with
  ``Retry-After`` (after its request is read) and close. One log line per 10 s for either.
  ``accept()`` never runs out of descriptors, so there is no storm of accept errors;
- shutdown (SIGTERM): new connections stop, idle ones close, running transfers get
  ``shutdown_grace`` seconds (uvicorn's graceful timeout); each transfer still running then is
  cut with one log line, and a request that had not started its answer gets 503.

Mixed into the protocol class by :func:`.protocol.protocol_class`; nothing runs at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from spacy_index.errors import Refused
from spacy_index.server.config_types import LimitsConfig
from spacy_index.server.logtext import printable

log = logging.getLogger("spacy_index.server")

_REASONS = {408: b"Request Timeout", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def _answer(status: int, text: str, *, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    body = text.encode() + b"\n"
    head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: text/plain; charset=utf-8\r\n", b"connection: close\r\n",
            b"content-length: %d\r\n" % len(body)]
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % retry_after)
    return b"".join(head) + b"\r\n" + body


#: after a refusal, what the client still sends is dropped for this long, up to this much
LINGER = 2.0
LINGER_BYTES = 1 << 20

BUSY = _answer(503, "too many connections; retry in a moment", retry_after=1)
SHUTTING_DOWN = _answer(503, "the server is shutting down; retry", retry_after=1)


class Guard:
    """What the connections of one server share: the limits, whether it is draining, and a
    log that says a repeated event once per ``interval`` seconds with a count."""

    def __init__(self, limits: LimitsConfig, max_connections: int,
                 interval: float = 10.0) -> None:
        self.limits = limits
        self.max_connections = max_connections
        self.draining = False
        self.interval = interval
        self._said: dict[str, tuple[float, int]] = {}

    def warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        last, quiet = self._said.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self._said[key] = (last, quiet + 1)
            return
        more = f" ({quiet} more like it in the last {self.interval:.0f} s)" if quiet else ""
        self._said[key] = (now, 0)
        log.warning("%s%s", message, more)


class ConnectionLimits:
    """Mixin for uvicorn's ``HttpToolsProtocol``: see the module docstring. The subclass
    sets ``guard`` and calls :meth:`_head_done` when a request head is complete."""

    guard: Guard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._in_head = False  # a request head has begun and is not complete yet
        self._began = False  # ... and began in the chunk being parsed
        self._head_bytes = 0
        self._header_lines = self._header_sum = 0
        self._timer: asyncio.TimerHandle | None = None
        self._since = 0.0  # loop time since when no request has been in flight
        self._lingering = False  # answered a refusal; closing
        self._dropped = 0

    # connection

    def connection_made(self, transport: Any) -> None:
        guard = self.guard
        self._since = self.loop.time()  # type: ignore[attr-defined]
        connections = self.connections  # type: ignore[attr-defined]
        if len(connections) >= guard.max_connections and not guard.draining:
            # full: make room by closing the connection that has waited longest without a
            # request in flight (idle keep-alive, nothing sent, or a head still arriving), as
            # nginx reuses idle keep-alive connections; only when every one is busy, refuse
            victim = min((c for c in connections if not c._busy() and not c._refused),
                         key=lambda c: c._since, default=None)
            if victim is not None:
                connections.discard(victim)
                victim.transport.close()
                guard.warn("evict", f"connection limit reached ({guard.max_connections} "
                                    "open): closing the longest-idle connection for a new one")
        if len(connections) >= guard.max_connections or guard.draining:
            # refused: read what the client sent (closing with unread bytes would reset the
            # connection and lose the answer), answer 503, close; at most 1 s later anyway
            self.transport = transport
            self._refused = True
            self._close_later(1.0)
            if not guard.draining:
                guard.warn("busy", f"connection limit reached ({guard.max_connections} open, "
                                   "all busy); refusing new connections with 503 "
                                   "([limits] max_connections)")
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._arm(self.guard.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return  # never added to the connection table
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # answered and closing: what the client still sends is dropped
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        if self._refused:
            self._close_with(SHUTTING_DOWN if self.guard.draining else BUSY)
            return
        import httptools

        self._began = False
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        try:
            self.parser.feed_data(data)  # type: ignore[attr-defined]
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, Refused):
                self._refuse(e.__context__)
            else:
                self._invalid()
            return
        except httptools.HttpParserUpgrade:  # as uvicorn's own data_received
            if self._should_upgrade():  # type: ignore[attr-defined]
                self.handle_websocket_upgrade()  # type: ignore[attr-defined]
            else:
                self._unsupported_upgrade_warning()  # type: ignore[attr-defined]
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        if self._in_head and not self.transport.is_closing():
            # bytes of a head that began in an earlier chunk: counted before httptools joins
            # them (one that began in this chunk is under one read, 256 KiB, so far)
            if not self._began:
                self._head_bytes += len(data)
            if self._head_bytes > self.guard.limits.max_header_size:
                self._refuse(Refused(431, "request head over [limits] max_header_size"))
            elif self._timer is None:
                self._arm(self.guard.limits.header_timeout)

    # parser callbacks (before uvicorn's)

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self._in_head = self._began = True
        self._head_bytes = self._header_lines = self._header_sum = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)  # type: ignore[misc]
        if len(self.url) > self.guard.limits.max_url_length:  # type: ignore[attr-defined]
            raise Refused(414, "request target over [limits] max_url_length")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.guard.limits
        self._header_lines += 1
        line = len(name) + len(value) + 4  # ": " and CRLF
        self._header_sum += line
        if line > limits.max_header_line:
            raise Refused(431, "header line over [limits] max_header_line")
        if self._header_lines > limits.max_headers:
            raise Refused(431, "more header lines than [limits] max_headers")
        if self._header_sum + len(self.url) > limits.max_header_size:  # type: ignore[attr-defined]
            raise Refused(431, "request head over [limits] max_header_size")
        super().on_header(name, value)  # type: ignore[misc]

    def _head_done(self) -> None:
        self._in_head = False
        self._disarm()

    def on_response_complete(self) -> None:
        self._since = self.loop.time()  # type: ignore[attr-defined]
        super().on_response_complete()  # type: ignore[misc]
        if self.guard.draining and not self.transport.is_closing():
            self.transport.close()  # answered after SIGTERM: nothing more on this connection

    def shutdown(self) -> None:
        """SIGTERM (uvicorn calls this on every open connection)."""
        self.guard.draining = True
        if not self._refused:
            super().shutdown()  # type: ignore[misc]

    # what happens at a limit

    def _busy(self) -> bool:
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is not None and not cycle.response_complete

    def _refuse(self, why: Refused) -> None:
        peer = self.client  # type: ignore[attr-defined]
        client = f"{peer[0]}:{peer[1]}" if peer else "a client"
        self.guard.warn(f"refused-{why.status}", f"{client}: {why.status} {why}; closed")
        self._close_with(_answer(why.status, str(why)))

    def _close_with(self, answer: bytes) -> None:
        """Answer (unless an answer is streaming: then the connection is simply cut) and
        close as nginx's lingering close does: the answer, then FIN, then what the client
        still sends is read and dropped for up to ``LINGER`` seconds, so that closing with
        unread bytes does not reset the connection and lose the answer."""
        transport = self.transport
        if transport.is_closing():
            return
        if self._busy() or not transport.can_write_eof():
            if not self._busy():
                transport.write(answer)
            transport.close()
            return
        transport.write(answer)
        transport.write_eof()
        self._lingering = True
        self._close_later(LINGER)

    def _close_later(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self.transport.close)  # type: ignore[attr-defined]

    def _invalid(self) -> None:
        msg = "Invalid HTTP request received."
        self.guard.warn("invalid", msg)
        self.send_400_response(msg)  # type: ignore[attr-defined]

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._header_timeout)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._busy():  # a pipelined head while an answer streams: wait for that answer
            self._arm(self.guard.limits.header_timeout)
            return
        if self._in_head:
            self._close_with(_answer(408, "the request head took longer than "
                                          "[limits] header_timeout"))
        else:
            self.transport.close()


def drain_guarded(app: Any, cycle: Any, guard: Guard) -> Any:
    """``app`` for one request, such that a transfer cut at the end of the shutdown grace
    logs one line (no traceback) and a request that had not started its answer gets 503."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.monotonic()
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if not guard.draining:
                raise
            log.warning("shutdown: cut %s %s after %.1f s (%s; [limits] shutdown_grace = %g s)",
                        scope.get("method"), printable(scope.get("path", "")),
                        time.monotonic() - started,
                        "answer started" if cycle.response_started else "answered 503",
                        guard.limits.shutdown_grace)
            transport = cycle.transport
            if not cycle.response_started and not transport.is_closing():
                transport.write(SHUTTING_DOWN)
            cycle.disconnected = True  # uvicorn then logs nothing more for this request
            with contextlib.suppress(Exception):
                transport.close()

    return guarded


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, guard: Guard) -> None:
    """asyncio reports every ``accept()`` that fails for lack of descriptors with a
    traceback; say it once per 10 s instead (the connection cap normally prevents it)."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            guard.warn("accept", f"accept() failed: {context.get('exception')}; lower "
                                 "[limits] max_connections or raise the open-file limit")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


__all__ = ["BUSY", "SHUTTING_DOWN", "ConnectionLimits", "Guard", "drain_guarded",
           "quiet_accept_errors"]
