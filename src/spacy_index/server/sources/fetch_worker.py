"""The page-fetch process: ``python -m spacy_index.server.sources.fetch_worker``, started by
:class:`~.fetch.ProcessFetcher`, never by hand.

It reads its settings (the source's URL, credentials, CA bundle and proxy: the arguments of
:func:`~.clients.source_client`) as the first message on stdin, then ``("fetch", id, url,
headers, limit, what)`` and ``("cancel", id)`` messages, and answers each fetch on stdout with
``(id, ok, result, events)``: ``result`` a :class:`~.frames.Fetched` or the one-line error
(both from :func:`~.bodies.fetch_page`),
``events`` what the metrics count (each upstream request's status and time, body bytes,
failures). It exits when stdin ends (serve stopped, or is gone), quietly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
import sys
import threading
from typing import Any

import httpx

from spacy_index.errors import UpstreamError
from spacy_index.http import wrap_transports
from spacy_index.server.metrics_transport import MeteredTransport
from spacy_index.server.sources.bodies import fetch_page
from spacy_index.server.sources.clients import source_client
from spacy_index.server.sources.frames import read_frame, write_frame

_EVENTS: contextvars.ContextVar[list[tuple[Any, ...]]] = contextvars.ContextVar("events")


class _Recorder:
    """Stands in for serve's Metrics in :class:`MeteredTransport`: what it is told goes to
    the current fetch's event list, which serve's process replays into its own metrics."""

    def _add(self, *event: Any) -> None:
        events = _EVENTS.get(None)
        if events is not None:
            events.append(event)

    def upstream_answered(self, source: str, status: int, seconds: float) -> None:
        self._add("answered", status, seconds)

    def upstream_failed(self, source: str, error: BaseException | str,
                        seconds: float | None) -> None:
        self._add("failed", error if isinstance(error, str) else type(error).__name__, seconds)

    def upstream_read(self, source: str, nbytes: int) -> None:
        self._add("read", nbytes)


async def _one(client: httpx.AsyncClient, out: int, rid: int, url: str,
               headers: dict[str, str], limit: int, what: str) -> None:
    events: list[tuple[Any, ...]] = []
    _EVENTS.set(events)
    try:
        fetched = await fetch_page(client, url, headers, limit, what)
    except UpstreamError as e:
        reply: tuple[Any, ...] = (rid, False, str(e), events)
    except asyncio.CancelledError:
        write_frame(out, (rid, None, None, events))  # serve stopped waiting: only the counts
        raise
    else:
        reply = (rid, True, fetched, events)
    write_frame(out, reply)


def _reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
    """Thread: messages from stdin onto the loop's queue; None when stdin ends."""
    stdin = sys.stdin.buffer
    while True:
        message = read_frame(stdin)
        loop.call_soon_threadsafe(queue.put_nowait, message)
        if message is None:
            return


async def _serve(settings: dict[str, Any], out: int) -> None:
    client, _ = source_client(**settings)
    recorder = _Recorder()
    wrap_transports(client, lambda t: MeteredTransport(t, recorder, "pages"))  # type: ignore[arg-type]
    queue: asyncio.Queue[Any] = asyncio.Queue()
    threading.Thread(target=_reader, args=(asyncio.get_running_loop(), queue),
                     daemon=True).start()
    tasks: dict[int, asyncio.Task[None]] = {}
    try:
        while (message := await queue.get()) is not None:
            kind, rid = message[0], message[1]
            if kind == "fetch":
                task = asyncio.create_task(_one(client, out, rid, *message[2:]))
                tasks[rid] = task
                task.add_done_callback(lambda _t, rid=rid: tasks.pop(rid, None))
            elif kind == "cancel" and rid in tasks:
                tasks[rid].cancel()
    finally:
        for task in list(tasks.values()):
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await client.aclose()


def main() -> None:
    # serve's terminal sends Ctrl-C to the whole process group: serve handles it, and this
    # process ends when serve closes the pipe; SIGTERM (a service manager) ends it at once
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print never corrupts a message
    settings = read_frame(sys.stdin.buffer)
    if settings is None:
        return
    with contextlib.suppress(BrokenPipeError):  # serve is gone
        asyncio.run(_serve(settings, out))


if __name__ == "__main__":
    main()
