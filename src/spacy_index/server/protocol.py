"""uvicorn's httptools protocol with two additions that make ``serve`` fast.

1. **Zero-copy files.** Each connection's scope advertises the ASGI *Zero Copy Send*
   extension (``http.response.zerocopysend``, asgi.readthedocs.io/en/latest/extensions.html)
   on plain-TCP connections. The app then hands over an open file, an offset and a count, and
   the bytes go from the page cache to the socket with ``sendfile(2)``, never through Python:
   spans of ``THREAD_MIN`` bytes or more by blocking calls in a worker thread (a 200 MB file
   in a handful of calls, while the event loop serves other requests), smaller ones with
   ``loop.sendfile`` (:mod:`.zerocopy`). TLS connections do not advertise it (the kernel
   cannot encrypt), so the app streams them in chunks.

2. **Answers without a task.** A ``fast`` callable (:meth:`Server.fast_response`) may answer a
   request synchronously from already-rendered bytes (a cached project page). Such requests
   skip the task, Starlette's routing and the middleware; everything else goes the usual way.

3. **Limits and a clean drain** per connection (:mod:`.limits`): request-head size, header
   timeout, a connection cap, and one line per transfer cut at shutdown.

All three hook into uvicorn's documented ``http=`` protocol-class option and its
``_start_asgi_task`` step. :func:`protocol_class` returns ``None`` when that shape is missing
(another uvicorn layout, no httptools), and the CLI then runs uvicorn's default protocol: slower,
same answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from spacy_index.server.config import LimitsConfig
from spacy_index.server.limits import ConnectionLimits, Guard, drain_guarded
from spacy_index.server.zerocopy import ZEROCOPY, wrap_zerocopy_send

#: ``fast(scope) -> (status, headers, body) | None``; headers are lower-case byte pairs
#: without content-length (added here)
FastResponder = Callable[[dict[str, Any]], "tuple[int, list[tuple[bytes, bytes]], bytes] | None"]

#: (id(headers), keep-alive, head only) -> (headers, default headers, body length, bytes)
_HEADS: dict[tuple[int, bool, bool], tuple[Any, Any, int, bytes]] = {}


def protocol_class(fast: FastResponder | None = None,
                   guard: Guard | None = None) -> type[asyncio.Protocol] | None:
    """A subclass of uvicorn's ``HttpToolsProtocol`` with zero-copy send, ``fast`` and the
    per-connection limits and shutdown drain of ``guard`` (:mod:`.limits`; the defaults of
    ``[limits]`` when not given)."""
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import (
            STATUS_LINE,
            HttpToolsProtocol,
            RequestResponseCycle,
        )
    except ImportError:  # httptools missing
        return None
    needed = ("_start_asgi_task", "on_headers_complete", "on_response_complete", "on_url",
              "on_header", "on_message_begin", "shutdown", "send_400_response",
              "_unset_keepalive_if_required", "_should_upgrade")
    if not all(hasattr(HttpToolsProtocol, n) for n in needed) or not hasattr(
            RequestResponseCycle, "send"):
        return None

    if guard is None:
        guard = Guard(LimitsConfig(), LimitsConfig().max_connections)
    # staticmethod: a plain function (or a bound method) as a class attribute, never bound
    return type("SpacyIndexHttpProtocol", (_FastAnswers, ConnectionLimits, HttpToolsProtocol), {
        "guard": guard, "_fast": staticmethod(fast) if fast is not None else None,
        "_parse_url": staticmethod(httptools.parse_url), "_status_line": STATUS_LINE,
        "__qualname__": "SpacyIndexHttpProtocol", "__module__": __name__})


class _FastAnswers:
    """The protocol's own steps (mixed in before uvicorn's ``HttpToolsProtocol``): answers
    from ``_fast`` without a task, and the zero-copy extension on every other request."""

    def on_headers_complete(self: Any) -> None:
        self._head_done()
        # Keep-alive requests after the first: try the cached answer before uvicorn builds
        # a request cycle. Only in order (no response in progress, nothing pipelined) and
        # only for plain paths; anything else takes uvicorn's way (and _start_asgi_task).
        fast = self._fast
        cycle = self.cycle
        if (fast is not None and cycle is not None and cycle.response_complete
                and not self.pipeline and not self.root_path
                and not self.parser.should_upgrade()):
            method = self.parser.get_method()
            if method == b"GET" or method == b"HEAD":
                url = self._parse_url(self.url)
                raw_path = url.path
                if not url.query and b"%" not in raw_path:
                    version = self.parser.get_http_version()
                    scope = self.scope
                    scope["method"] = method.decode("ascii")
                    scope["path"] = raw_path.decode("ascii")
                    scope["raw_path"] = raw_path
                    scope["query_string"] = b""
                    if version != "1.1":
                        scope["http_version"] = version
                    answer = fast(scope)
                    if answer is not None:
                        keep_alive = version != "1.0" and self.parser.should_keep_alive()
                        self._write_fast(scope["method"], keep_alive,
                                         self.server_state.default_headers, *answer)
                        self.on_response_complete()
                        return
        super().on_headers_complete()  # type: ignore[misc]

    def _start_asgi_task(self: Any, cycle: Any, app: Any) -> None:
        scope = cycle.scope
        fast = self._fast
        if fast is not None and scope.get("method") in ("GET", "HEAD"):
            answer = fast(scope)
            if answer is not None:
                cycle.response_started = cycle.response_complete = True
                self._write_fast(scope["method"], cycle.keep_alive, cycle.default_headers,
                                 *answer)
                cycle.on_response()
                return
        if self.transport.get_extra_info("sslcontext") is None:
            scope["extensions"] = {**scope.get("extensions", {}), ZEROCOPY: {}}
            cycle.send = wrap_zerocopy_send(cycle, cycle.send, self.loop)
        super()._start_asgi_task(cycle, drain_guarded(app, cycle, self.guard))  # type: ignore[misc]

    def _write_fast(self: Any, method: str, keep_alive: bool, default_headers: Any, status: int,
                    headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        head_only = method == "HEAD" or status in (204, 304)
        # The status line and headers of a 200 are the same bytes until the page is
        # re-rendered (a new headers list) or the date changes (uvicorn swaps
        # default_headers once a second): built once, then reused. The cache holds the
        # lists it compares by identity, so their ids cannot be reused meanwhile.
        key = (id(headers), keep_alive, head_only)
        hit = _HEADS.get(key) if status == 200 else None
        if hit is not None and hit[0] is headers and hit[1] is default_headers \
                and hit[2] == len(body):
            head = hit[3]
        else:
            parts = [self._status_line[status]]
            for name, value in (*default_headers, *headers):
                parts += (name, b": ", value, b"\r\n")
            if not keep_alive:
                parts.append(b"connection: close\r\n")
            if status not in (204, 304):
                parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
            parts.append(b"\r\n")
            head = b"".join(parts)
            if status == 200:
                if len(_HEADS) >= 4096:
                    _HEADS.clear()
                _HEADS[key] = (headers, default_headers, len(body), head)
        self.transport.write(head if head_only else head + body)
        if not keep_alive:
            self.transport.close()


__all__ = ["ZEROCOPY", "FastResponder", "protocol_class"]
