"""An event loop in a thread of its own, for the upstream side of page lookups.

A lookup of a name serve has not cached costs its event loop a few milliseconds of Python
in httpx and httpcore (the request, the pool, a new connection; the cancellation when its
client leaves). On one loop, a burst of such lookups (a dozen impatient clients asking again
at once) runs ahead of the cached pages asked meanwhile, which then wait for the whole
burst. Run on this loop instead, that work competes with the server's loop only for the
GIL, which the server's loop takes back every switch interval (1 ms in ``serve``): a cached
page is answered in about a millisecond whatever the upstream side is doing.

The thread starts with the first call (never at import) and stops with :meth:`aclose`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


class LoopThread:
    """Runs coroutines on a private event loop in a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """The result of ``coro``, run on the thread's loop. Cancelling the caller cancels
        ``coro`` there."""
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        return await asyncio.wrap_future(future)

    async def aclose(self, *closing: Coroutine[Any, Any, Any]) -> None:
        """Run ``closing`` (e.g. ``client.aclose()`` of clients used there), then stop the
        loop and its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            for coro in closing:  # nothing ran there: close here
                await coro
            return
        for coro in closing:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 10)
        if not thread.is_alive():
            loop.close()
        with self._lock:
            self._loop = self._thread = None


__all__ = ["LoopThread"]
