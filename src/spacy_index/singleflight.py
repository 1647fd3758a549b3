"""Per-key single flight: concurrent callers asking for the same key share one piece of work.

Three shapes: :class:`SingleFlight` for async work (one task per key; every caller awaits it,
and a caller that is cancelled never cancels it for the others, unless it was the last one
and the flight was made with ``cancel_when_abandoned``), :class:`AsyncKeyedLocks` (one
``asyncio.Lock`` per key, a bounded number of keys) and :class:`KeyedLocks` for blocking
code (one ``threading.Lock`` per key).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

__all__ = ["AsyncKeyedLocks", "KeyedLocks", "SingleFlight"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """At most one running task per key; a key is forgotten as soon as its task ends, so the
    next call after that starts afresh (results are not cached here).

    ``cancel_when_abandoned``: the callers of :meth:`run` are counted, and when the last of
    them stops waiting (cancelled: its client left) before the task ends, the task is
    cancelled and forgotten, so that abandoned work does not hold what it uses (a pool's
    connections) and a caller arriving afterwards starts afresh. Tasks started with
    :meth:`start` (nobody waits for them) are never cancelled that way.
    """

    def __init__(self, *, cancel_when_abandoned: bool = False) -> None:
        self._running: dict[K, asyncio.Task[T]] = {}
        self._cancel_when_abandoned = cancel_when_abandoned
        #: callers waiting in run(), per task (only with cancel_when_abandoned)
        self._waiters: dict[asyncio.Task[T], int] = {}

    def __len__(self) -> int:
        return len(self._running)

    def __contains__(self, key: object) -> bool:
        return key in self._running

    def tasks(self) -> list[asyncio.Task[T]]:
        """The tasks running now (to cancel them at shutdown)."""
        return list(self._running.values())

    def start(self, key: K, work: Callable[[], Coroutine[Any, Any, T]], *,
              name: str | None = None) -> asyncio.Task[T]:
        """The task running for ``key``, started now (``work()``) if there is none. Raises
        RuntimeError without a running loop, before ``work`` is called."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(work(), name=name)
            self._running[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return task

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, T]], *,
                  name: str | None = None) -> T:
        """The result of ``work()`` for ``key``: started now if no task for ``key`` runs,
        else the running task's. ``work`` is only called when a task starts."""
        task = self.start(key, work, name=name)
        if not self._cancel_when_abandoned:
            return await asyncio.shield(task)
        self._waiters[task] = self._waiters.get(task, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            left = self._waiters.pop(task) - 1
            if left:
                self._waiters[task] = left
            elif not task.done():
                if self._running.get(key) is task:
                    del self._running[key]  # a caller arriving now starts afresh
                task.cancel()

    def _done(self, key: K, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved even if every caller went away


class AsyncKeyedLocks(LRUCache[K, asyncio.Lock]):
    """One ``asyncio.Lock`` per key, made on first use, at most ``maxsize`` kept (the least
    recently used go first). Dropping a lock while it is held lets a second holder in: what
    the locks serialise must stay correct then (it only does the work twice), since the bound
    is what keeps a stream of distinct keys from growing the map without end."""

    def __call__(self, key: K) -> asyncio.Lock:
        lock = self.get(key)
        if lock is None:
            lock = self[key] = asyncio.Lock()
        return lock


class KeyedLocks(Generic[K]):
    """One ``threading.Lock`` per key, made on first use and kept: a lock is small, and
    dropping one while a thread holds it would let a second thread in."""

    def __init__(self) -> None:
        self._locks: dict[K, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: K) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
