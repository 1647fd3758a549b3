"""uvicorn's httptools protocol with two additions that make ``serve`` fast.

1. **Zero-copy files.** Each connection's scope advertises the ASGI *Zero Copy Send*
   extension (``http.response.zerocopysend``, asgi.readthedocs.io/en/latest/extensions.html)
   on plain-TCP connections. The app then hands over an open file, an offset and a count, and
   the bytes go from the page cache to the socket with ``loop.sendfile`` (``sendfile(2)``),
   never through Python. TLS connections do not advertise it (the kernel cannot encrypt), so
   the app streams them in chunks.

2. **Answers without a task.** A ``fast`` callable (:meth:`Server.fast_response`) may answer a
   request synchronously from already-rendered bytes (a cached project page). Such requests
   skip the task, Starlette's routing and the middleware; everything else goes the usual way.

Both hook into uvicorn's documented ``http=`` protocol-class option and its
``_start_asgi_task`` step. :func:`protocol_class` returns ``None`` when that shape is missing
(another uvicorn layout, no httptools), and the CLI then runs uvicorn's default protocol: slower,
same answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("spacy_index.server")

#: ``fast(scope) -> (status, headers, body) | None``; headers are lower-case byte pairs
#: without content-length (added here)
FastResponder = Callable[[dict[str, Any]], "tuple[int, list[tuple[bytes, bytes]], bytes] | None"]

ZEROCOPY = "http.response.zerocopysend"


def protocol_class(fast: FastResponder | None = None) -> type[asyncio.Protocol] | None:
    """A subclass of uvicorn's ``HttpToolsProtocol`` with zero-copy send and ``fast``."""
    try:
        from uvicorn.protocols.http.httptools_impl import (
            STATUS_LINE,
            HttpToolsProtocol,
            RequestResponseCycle,
        )
    except ImportError:  # httptools missing
        return None
    if not hasattr(HttpToolsProtocol, "_start_asgi_task") or not hasattr(
            RequestResponseCycle, "send"):
        return None

    class Protocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            scope = cycle.scope
            if fast is not None and scope.get("method") in ("GET", "HEAD"):
                answer = fast(scope)
                if answer is not None:
                    self._write_fast(cycle, *answer)
                    return
            if self.transport.get_extra_info("sslcontext") is None:
                scope["extensions"] = {**scope.get("extensions", {}), ZEROCOPY: {}}
                cycle.send = _zerocopy_send(cycle, cycle.send, self.loop)
            super()._start_asgi_task(cycle, app)

        def _write_fast(self, cycle: Any, status: int, headers: list[tuple[bytes, bytes]],
                        body: bytes) -> None:
            parts = [STATUS_LINE[status]]
            for name, value in (*cycle.default_headers, *headers):
                parts += (name, b": ", value, b"\r\n")
            if not cycle.keep_alive:
                parts.append(b"connection: close\r\n")
            if status not in (204, 304):
                parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
            parts.append(b"\r\n")
            if cycle.scope["method"] != "HEAD" and status not in (204, 304):
                parts.append(body)
            cycle.response_started = cycle.response_complete = True
            self.transport.write(b"".join(parts))
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()

    Protocol.__name__ = Protocol.__qualname__ = "SpacyIndexHttpProtocol"
    return Protocol


def _zerocopy_send(cycle: Any, send: Callable[..., Any], loop: asyncio.AbstractEventLoop):
    """Wrap ``cycle.send`` so it also understands ``http.response.zerocopysend``."""

    async def zerocopy_send(message: dict[str, Any]) -> None:
        if message["type"] != ZEROCOPY:
            await send(message)
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"unexpected ASGI message {ZEROCOPY!r}")
        more_body = message.get("more_body", False)
        file = message["file"]
        offset = message.get("offset")
        if offset is None:
            offset = file.tell()
        count = message.get("count")
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected or cycle.scope["method"] == "HEAD" or count <= 0:
            await send({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        transport = cycle.transport
        if cycle.chunked_encoding:
            transport.write(b"%x\r\n" % count)
        elif count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        else:
            cycle.expected_content_length -= count
        try:
            await loop.sendfile(transport, file, offset, count)
        except (OSError, RuntimeError) as e:
            # the client went away mid-file (EPIPE/ECONNRESET, or the transport closed)
            log.debug("sendfile stopped: %s", type(e).__name__)
            cycle.disconnected = True
            transport.close()
            return
        if cycle.chunked_encoding:
            transport.write(b"\r\n")
        await send({"type": "http.response.body", "body": b"", "more_body": more_body})

    return zerocopy_send


__all__ = ["ZEROCOPY", "FastResponder", "protocol_class"]
