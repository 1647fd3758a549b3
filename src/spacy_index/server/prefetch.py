"""Pages fetched before a client asks for them: the projects a served wheel requires.

pip resolves one project at a time: a page, the chosen wheel's ``.metadata``, then the page of
each requirement in turn, with its own work in between. When ``serve`` hands out a wheel's
metadata, it fetches, parses and renders the pages of that wheel's requirements behind, so
that a cold page is ready, or on its way, when the client asks (a request for a page being
fetched joins that fetch). uv asks for pages in parallel itself, and gains less.

Bounded in every direction: at most ``[server] prefetch`` names per wheel (0 turns it off),
each wheel once per process, :data:`QUEUE` names waiting (more are dropped), and
:data:`AT_ONCE` fetches at a time, over the same page pool and single flight as clients' own
lookups. Names whose page is cached are skipped. A failure is logged (debug) and forgotten:
the client's own request then asks again, as without prefetching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from cachetools import LRUCache
from packaging.utils import NormalizedName

from spacy_index.wheelmeta.requires import required_projects

log = logging.getLogger("spacy_index.server")

#: names waiting to be prefetched, at most
QUEUE = 256
#: prefetches running at once, at most
AT_ONCE = 2


class Prefetcher:
    """Fetches the pages of the projects the wheels it is shown require, behind.

    ``fetch(name)`` looks the project up and renders its page (``Server.prefetch_page``);
    ``cached(name)`` says, without I/O, whether its page is current already; ``seen`` holds
    the wheels offered (bounded: ``Memory.lru("prefetched")``)."""

    def __init__(self, fetch: Callable[[NormalizedName], Awaitable[Any]],
                 cached: Callable[[NormalizedName], bool], per_wheel: int,
                 seen: LRUCache[str, bool]) -> None:
        self._fetch = fetch
        self._cached = cached
        self.per_wheel = per_wheel
        self._seen = seen
        self._queue: deque[NormalizedName] = deque()
        self._waiting: set[NormalizedName] = set()
        self._running: set[asyncio.Task[None]] = set()
        #: names prefetched, dropped (queue full) and failed, since start
        self.counts = {"fetched": 0, "dropped": 0, "failed": 0}

    def offer(self, wheel: str, read: Callable[[], bytes]) -> None:
        """Queue the requirements of the wheel ``wheel`` (its sha256), whose metadata
        ``read()`` returns, unless this wheel was offered before. No I/O beyond ``read``."""
        if self.per_wheel <= 0 or wheel in self._seen:
            return
        self._seen[wheel] = True
        try:
            names = required_projects(read(), self.per_wheel)
        except (OSError, ValueError) as e:  # the metadata file went away, or is not text
            log.debug("prefetch: cannot read the requirements of %s: %s", wheel, e)
            return
        for name in names:
            if name in self._waiting or self._cached(name):
                continue
            if len(self._queue) >= QUEUE:
                self.counts["dropped"] += 1
                continue
            self._queue.append(name)
            self._waiting.add(name)
            self._pump()  # the first names start at once; only the rest wait

    def _pump(self) -> None:
        while self._queue and len(self._running) < AT_ONCE:
            name = self._queue.popleft()
            task = asyncio.get_running_loop().create_task(self._one(name))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._pump()

    async def _one(self, name: NormalizedName) -> None:
        try:
            if not self._cached(name):  # a client may have asked for it meanwhile
                await self._fetch(name)
                self.counts["fetched"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the client's own request asks again and reports it
            self.counts["failed"] += 1
            log.debug("prefetch of %s failed: %s", name, e)
        finally:
            self._waiting.discard(name)

    async def aclose(self) -> None:
        """Stop: nothing more is queued, running prefetches are cancelled."""
        self.per_wheel = 0
        self._queue.clear()
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running.clear()
