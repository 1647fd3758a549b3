"""Zero-copy files: the ASGI *Zero Copy Send* extension (``http.response.zerocopysend``) that
the server protocol (:mod:`.protocol`) offers on plain-TCP connections, carried out with
``sendfile(2)``: spans of ``THREAD_MIN`` bytes or more by blocking calls in a worker thread,
smaller ones with ``loop.sendfile``."""

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

log = logging.getLogger("spacy_index.server")

ZEROCOPY = "http.response.zerocopysend"


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


def wrap_zerocopy_send(cycle: Any, send: Callable[..., Any], loop: asyncio.AbstractEventLoop):
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
    fut: asyncio.Future[int] = loop.create_future()
    stop = threading.Event()
    sock_fd, file_fd = _dup_both(sock, file)

    def job() -> None:
        sent, exc = 0, None
        try:
            sent = _blocking_sendfile(sock_fd, file_fd, offset, count, stop)
        except BaseException as e:  # handed to the loop
            exc = e
        finally:
            os.close(file_fd)
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed
            loop.call_soon_threadsafe(_settle, fut, sent, exc)

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


def _dup_both(sock: Any, file: Any) -> tuple[int, int]:
    """Duplicates of the socket's and the file's descriptors: both, or neither."""
    sock_fd = os.dup(sock.fileno())
    try:
        return sock_fd, os.dup(file.fileno())
    except BaseException:
        os.close(sock_fd)
        raise


def _settle(fut: asyncio.Future[int], sent: int, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(sent)


def _blocking_sendfile(sock_fd: int, file_fd: int, offset: int, count: int,
                       stop: threading.Event) -> int:
    """The worker thread's part of :func:`_threaded_sendfile`: the bytes sent, until ``count``
    or ``stop``; closes ``sock_fd`` (not ``file_fd``)."""
    # the duplicate shares the transport's open file description: the socket blocks
    # (with a send timeout, so the stop flag is seen) until it is reset below
    try:
        dup = socket.socket(fileno=sock_fd)
    except BaseException:
        os.close(sock_fd)
        raise
    sent = 0
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
    return sent
