"""Per-key single flight: concurrent callers asking for the same key share one piece of work.

Two shapes: :class:`SingleFlight` for async work (one task per key; every caller awaits it,
and a caller that is cancelled never cancels it for the others) and :class:`KeyedLocks` for
blocking code (one ``threading.Lock`` per key).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["KeyedLocks", "SingleFlight"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """At most one running task per key; a key is forgotten as soon as its task ends, so the
    next call after that starts afresh (results are not cached here)."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._running)

    def __contains__(self, key: object) -> bool:
        return key in self._running

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, T]], *,
                  name: str | None = None) -> T:
        """The result of ``work()`` for ``key``: started now if no task for ``key`` runs,
        else the running task's. ``work`` is only called when a task starts."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(work(), name=name)
            self._running[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved even if every caller went away


class KeyedLocks(Generic[K]):
    """One ``threading.Lock`` per key, made on first use and kept: a lock is small, and
    dropping one while a thread holds it would let a second thread in."""

    def __init__(self) -> None:
        self._locks: dict[K, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: K) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
