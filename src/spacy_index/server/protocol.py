"""uvicorn's httptools protocol with two additions that make ``serve`` fast.

1. **Zero-copy files.** Each connection's scope advertises the ASGI *Zero Copy Send*
   extension (``http.response.zerocopysend``, asgi.readthedocs.io/en/latest/extensions.html)
   on plain-TCP connections. The app then hands over an open file, an offset and a count, and
   the bytes go from the page cache to the socket with ``sendfile(2)``, never through Python:
   spans of ``THREAD_MIN`` bytes or more by blocking calls in a worker thread (a 200 MB file
   in a handful of calls, while the event loop serves other requests), smaller ones with
   ``loop.sendfile``. TLS connections do not advertise it (the kernel cannot encrypt), so the
   app streams them in chunks.

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
import contextlib
import logging
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from spacy_index.server.config import LimitsConfig
from spacy_index.server.limits import ConnectionLimits, Guard, drain_guarded

log = logging.getLogger("spacy_index.server")

#: ``fast(scope) -> (status, headers, body) | None``; headers are lower-case byte pairs
#: without content-length (added here)
FastResponder = Callable[[dict[str, Any]], "tuple[int, list[tuple[bytes, bytes]], bytes] | None"]

ZEROCOPY = "http.response.zerocopysend"

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

    class Protocol(ConnectionLimits, HttpToolsProtocol):  # type: ignore[misc, valid-type]
        def on_headers_complete(self) -> None:
            self._head_done()
            # Keep-alive requests after the first: try the cached answer before uvicorn builds
            # a request cycle. Only in order (no response in progress, nothing pipelined) and
            # only for plain paths; anything else takes uvicorn's way (and _start_asgi_task).
            cycle = self.cycle
            if (fast is not None and cycle is not None and cycle.response_complete
                    and not self.pipeline and not self.root_path
                    and not self.parser.should_upgrade()):
                method = self.parser.get_method()
                if method == b"GET" or method == b"HEAD":
                    url = httptools.parse_url(self.url)
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
            super().on_headers_complete()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            scope = cycle.scope
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
                cycle.send = _zerocopy_send(cycle, cycle.send, self.loop)
            super()._start_asgi_task(cycle, drain_guarded(app, cycle, self.guard))

        def _write_fast(self, method: str, keep_alive: bool, default_headers: Any, status: int,
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
                parts = [STATUS_LINE[status]]
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

    Protocol.guard = guard
    Protocol.__name__ = Protocol.__qualname__ = "SpacyIndexHttpProtocol"
    return Protocol


def _cork(sock: Any, on: bool) -> bool:
    """Set TCP_CORK (Linux) on a connection's socket; False where there is none.

    Full segments while a file goes out, the rest flushed when uncorked: nginx's
    `tcp_nopush on` with sendfile (asyncio sets TCP_NODELAY on every connection)."""
    option = getattr(socket, "TCP_CORK", None)
    if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1 if on else 0)
    except OSError:
        return False
    return True


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
            # Large spans: blocking sendfile(2) in a worker thread (the kernel moves the span
            # in a few calls), corked there; small ones, or when no thread is free: the
            # event loop's, corked here.
            if count < THREAD_MIN or not await _threaded_sendfile(loop, transport, file,
                                                                  offset, count):
                sock = transport.get_extra_info("socket")
                corked = _cork(sock, True)
                await loop.sendfile(transport, file, offset, count)
                if corked:
                    _cork(sock, False)
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


#: Spans of at least this many bytes go out with one blocking ``sendfile(2)`` per 64 MiB in a
#: worker thread (:func:`_threaded_sendfile`); smaller ones with ``loop.sendfile``.
THREAD_MIN = 1 << 20
#: At most this many threaded transfers at once; more concurrent ones use ``loop.sendfile``.
MAX_THREADS = 32
_STEP = 64 << 20  #: bytes per blocking sendfile(2) call (the stop flag is checked between)
_TIMEOUT = struct.pack("ll", 1, 0)  #: SO_SNDTIMEO while blocking: re-check the stop flag each 1 s
_NO_TIMEOUT = struct.pack("ll", 0, 0)


class _Senders:
    """Daemon threads that run blocking sendfile jobs, at most ``limit`` at once; a job is
    only accepted when a thread is free for it (no queueing behind a slow client). Idle
    threads exit after a minute."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> bool:
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._threads < self.limit:
                try:
                    threading.Thread(target=self._work, name="spacy-index-sendfile",
                                     daemon=True).start()
                except RuntimeError:  # no more threads for this process
                    return False
                self._threads += 1
            else:
                return False
        self._jobs.put(job)
        return True

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=60)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # no job is on its way to this thread: leave
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            try:
                job()
            finally:
                with self._lock:
                    self._idle += 1


_SENDERS = _Senders(MAX_THREADS)


async def _threaded_sendfile(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                             file: Any, offset: int, count: int) -> bool:
    """Send ``count`` bytes of ``file`` from ``offset`` with blocking ``sendfile(2)`` calls in
    a worker thread: the kernel moves the span in a few calls, sleeping while the socket
    buffer is full, as nginx's workers do, instead of one event-loop wake-up per socket
    buffer (``loop.sendfile``). False (nothing sent) when it cannot be used here: no socket,
    unsent bytes in the transport, or every thread busy.

    The thread works on its own duplicates of both descriptors (whatever the loop closes
    meanwhile, it never writes to a reused descriptor number). Reading is paused meanwhile
    (asyncio's own sendfile does the same) and the socket is blocking only while the thread
    runs: the loop does not touch it then. The thread corks the socket (:func:`_cork`) and
    uncorks it right after its last call, so that the file's last partial segment leaves at
    once, not when the loop has woken up. Errors (the client left) are raised here; a
    cancelled transfer shuts the socket down, which wakes the blocked call at once."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing() or transport.get_write_buffer_size():
        return False
    fut = loop.create_future()
    stop = threading.Event()
    fds = [os.dup(sock.fileno())]
    try:
        fds.append(os.dup(file.fileno()))
    except BaseException:
        os.close(fds[0])
        raise
    sock_fd, file_fd = fds

    def done(sent: int, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(sent)

    def job() -> None:
        sent, exc = 0, None
        try:
            # the duplicate shares the transport's open file description: the socket blocks
            # (with a send timeout, so the stop flag is seen) until it is reset below
            try:
                dup = socket.socket(fileno=sock_fd)
            except BaseException:
                os.close(sock_fd)
                raise
            corked = False
            try:
                dup.setblocking(True)
                dup.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEOUT)
                corked = _cork(dup, True)
                while sent < count and not stop.is_set():
                    try:
                        n = os.sendfile(sock_fd, file_fd, offset + sent, min(count - sent, _STEP))
                    except (BlockingIOError, InterruptedError):  # 1 s without progress
                        continue
                    if n == 0:
                        raise OSError(f"file ended {count - sent} bytes early")
                    sent += n
            finally:
                if corked:
                    _cork(dup, False)
                with contextlib.suppress(OSError):
                    dup.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _NO_TIMEOUT)
                    dup.setblocking(False)
                dup.close()  # closes sock_fd
        except BaseException as e:  # handed to the loop
            exc = e
        finally:
            os.close(file_fd)
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed
            loop.call_soon_threadsafe(done, sent, exc)

    reading = transport.is_reading()
    transport.pause_reading()
    if not _SENDERS.submit(job):
        os.close(sock_fd)
        os.close(file_fd)
        if reading:
            transport.resume_reading()
        return False
    try:
        sent = await fut
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        transport.close()
        raise
    if sent != count:  # stopped early
        raise ConnectionError(f"sendfile stopped after {sent} of {count} bytes")
    if reading and not transport.is_closing():
        transport.resume_reading()
    return True


__all__ = ["ZEROCOPY", "FastResponder", "protocol_class"]
