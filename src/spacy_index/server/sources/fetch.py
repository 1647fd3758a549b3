"""Where an index source's page fetches run: ``[limits] page_fetch``.

* ``process`` (the default): in a process of their own (:mod:`.fetch_worker`), one per
  source, started with the first fetch and stopped with the source. A lookup of a name serve
  has not cached costs a few milliseconds of Python in httpx and httpcore (the request, the
  pool, a new connection, the cancellation when its client leaves). In serve's process that
  work holds the GIL, and each cached answer on the server's loop then waits for it after
  every system call; in a process of its own it runs on the other core. What comes back is
  the status, the final URL, three headers and the body (capped there, as here).
* ``thread``: on an event loop in a thread of serve's process (:class:`.LoopThread`), with an
  httpx client that a test may replace (``ThreadFetcher.client``).

Both meter each upstream request like the source's other clients (``instrument``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import IO, Any

import httpx

from spacy_index.errors import UpstreamError
from spacy_index.http import wrap_transports
from spacy_index.server.loopthread import LoopThread
from spacy_index.server.sources.bodies import fetch_page
from spacy_index.server.sources.clients import PAGE_POOL, source_client
from spacy_index.server.sources.frames import Fetched, read_frame, write_frame

Replay = Callable[[list[tuple[Any, ...]]], None]
WrapTransport = Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]


class PageFetcher:
    """GET one upstream page within a byte cap: :meth:`fetch` → :class:`Fetched`; a
    transport failure or a body over the cap raises :class:`UpstreamError` (one line)."""

    async def fetch(self, url: str, headers: Mapping[str, str], limit: int,
                    what: str) -> Fetched:
        raise NotImplementedError

    def instrument(self, wrap: WrapTransport, replay: Replay) -> None:
        """Meter the upstream requests: ``wrap`` for an in-process client's transports,
        ``replay`` for the events another process recorded."""

    def start(self) -> None:
        """Get ready for the first fetch now rather than with it (``serve`` at start)."""

    async def aclose(self) -> None:
        raise NotImplementedError


class ThreadFetcher(PageFetcher):
    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.client, _ = source_client(**settings, pool=PAGE_POOL)
        self._loop = LoopThread(f"pages:{name}")

    async def fetch(self, url: str, headers: Mapping[str, str], limit: int,
                    what: str) -> Fetched:
        return await self._loop.run(fetch_page(self.client, url, headers, limit, what))

    def instrument(self, wrap: WrapTransport, replay: Replay) -> None:
        wrap_transports(self.client, wrap)

    async def aclose(self) -> None:
        await self._loop.aclose(self.client.aclose())


class _Child:
    """One running page-fetch process: its pipes, the fetches waiting on it and the thread
    that reads its answers (which holds no reference to the fetcher, so a fetcher nobody
    holds is collected and its finalizer stops the process)."""

    def __init__(self, name: str, settings: dict[str, Any], meter: list[Replay | None]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spacy_index.server.sources.fetch_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin_fd = self.proc.stdin.fileno()
        #: id → (the loop that asked, its future; None once it stopped waiting: the answer
        #: then only brings the counts)
        self.pending: dict[int, tuple[asyncio.AbstractEventLoop,
                                      asyncio.Future[Fetched] | None]] = {}
        self.lock = threading.Lock()
        self.alive = True
        try:
            write_frame(self.stdin_fd, {**settings, "pool": PAGE_POOL})
        except BaseException:
            self.proc.kill()
            self.proc.communicate()
            raise
        threading.Thread(target=_read_answers, args=(self, self.proc.stdout, meter),
                         name=f"pages:{name}", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.lock:
            write_frame(self.stdin_fd, message)


def _settle(fut: asyncio.Future[Fetched], ok: bool, result: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(result)
    else:
        fut.set_exception(UpstreamError(result))


def _replay(replay: Replay, events: list[tuple[Any, ...]]) -> None:
    with contextlib.suppress(Exception):  # counting must never fail a page
        replay(events)


def _read_answers(child: _Child, stdout: IO[bytes], meter: list[Replay | None]) -> None:
    """Thread: each answer to its waiting future, on that future's loop."""
    try:
        while (answer := read_frame(stdout)) is not None:
            rid, ok, result, events = answer
            with child.lock:
                loop, fut = child.pending.pop(rid, (None, None))
            if loop is None:
                continue
            with contextlib.suppress(RuntimeError):  # RuntimeError: that loop is closed
                if events and meter[0] is not None:
                    loop.call_soon_threadsafe(_replay, meter[0], events)
                if fut is not None and ok is not None:
                    loop.call_soon_threadsafe(_settle, fut, ok, result)
    finally:
        stdout.close()
        with child.lock:
            child.alive = False
            left, child.pending = child.pending, {}
        for loop, fut in left.values():
            if fut is None:
                continue
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(
                    _settle, fut, False, f"the page fetch process of source {child.name!r} "
                                         f"stopped; the next request starts another")


def _stop(child: _Child) -> None:
    """Close the process's stdin (it exits at once), then reap it."""
    with contextlib.suppress(OSError):
        assert child.proc.stdin is not None
        child.proc.stdin.close()
    try:
        child.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()


class ProcessFetcher(PageFetcher):
    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self._settings = settings
        self._meter: list[Replay | None] = [None]
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._finalizer: weakref.finalize | None = None

    def _running(self) -> _Child:
        with self._lock:
            child = self._child
            if child is None or not child.alive:
                if self._finalizer is not None:
                    self._finalizer()
                child = self._child = _Child(self.name, self._settings, self._meter)
                self._finalizer = weakref.finalize(self, _stop, child)
            return child

    async def fetch(self, url: str, headers: Mapping[str, str], limit: int,
                    what: str) -> Fetched:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Fetched] = loop.create_future()
        rid = next(self._ids)
        message = ("fetch", rid, url, dict(headers), limit, what)
        child = self._submit(loop, fut, rid, message)
        try:
            return await fut
        except asyncio.CancelledError:
            with child.lock:
                if rid in child.pending:
                    child.pending[rid] = (loop, None)
            with contextlib.suppress(OSError):
                child.send(("cancel", rid))
            raise

    def _submit(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Fetched], rid: int,
                message: tuple[Any, ...]) -> _Child:
        """Hand ``message`` to a running process (a new one if the last has died, once more
        if it dies meanwhile); the process it went to."""
        for _attempt in (1, 2):
            try:
                child = self._running()
            except OSError as e:
                raise UpstreamError(f"the page fetch process of source {self.name!r} could "
                                    f"not be started: {e.strerror or e}") from None
            with child.lock:  # the answer reader marks it dead and fails its fetches under it
                sent = child.alive
                if sent:
                    child.pending[rid] = (loop, fut)
            if sent:
                try:
                    child.send(message)
                    return child
                except OSError:  # it has exited: its reader fails what else it held
                    with child.lock:
                        child.pending.pop(rid, None)
                        child.alive = False
        raise UpstreamError(f"the page fetch process of source {self.name!r} exited as soon "
                            f"as it started, twice; its error is in serve's log")

    def instrument(self, wrap: WrapTransport, replay: Replay) -> None:
        self._meter[0] = replay

    def start(self) -> None:
        with contextlib.suppress(OSError):  # else the first fetch says why, as a 502
            self._running()

    async def aclose(self) -> None:
        if self._finalizer is not None:
            await asyncio.to_thread(self._finalizer)


def page_fetcher(mode: str, name: str, settings: dict[str, Any]) -> PageFetcher:
    """The page fetcher ``[limits] page_fetch`` asks for (``settings``: the arguments of
    :func:`~.clients.source_client` but ``pool``)."""
    if mode == "thread":
        return ThreadFetcher(name, settings)
    return ProcessFetcher(name, settings)


__all__ = ["PageFetcher", "ProcessFetcher", "ThreadFetcher",
           "page_fetcher"]
