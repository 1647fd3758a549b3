"""Counters of the file cache since the server started: hits and misses of ``/files/...``
(wheels, sdists) and of PEP 658 ``.metadata`` files.

One :class:`CacheStats` per server (``Server.cache_stats``), fed by :class:`CountCache`, a
middleware that reads the outcome each route already records for the access log
(``scope["state"]["cache"]``: ``hit``, ``miss``, ``hit-unverified``, ``miss-unverified``,
``local``). The catalogue page shows the hit rate; :meth:`CacheStats.samples` gives the same
numbers as metric samples, for a later Prometheus endpoint.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

KINDS = ("file", "metadata")
#: outcomes that count towards the hit rate (``local``: a folder source, no cache involved)
HITS = ("hit", "hit-unverified")
MISSES = ("miss", "miss-unverified")


class CacheStats:
    """Cache outcomes by ``(kind, outcome)`` since ``started`` (wall clock, seconds)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.started = clock()
        self._clock = clock
        self._counts: Counter[tuple[str, str]] = Counter()

    def record(self, kind: str, outcome: str) -> None:
        self._counts[(kind, outcome)] += 1

    def count(self, kind: str, outcome: str) -> int:
        return self._counts[(kind, outcome)]

    def hits(self, kind: str = "file") -> int:
        return sum(self._counts[(kind, o)] for o in HITS)

    def misses(self, kind: str = "file") -> int:
        return sum(self._counts[(kind, o)] for o in MISSES)

    def hit_rate(self, kind: str = "file") -> float | None:
        """Hits / (hits + misses), or None before the first request."""
        total = self.hits(kind) + self.misses(kind)
        return self.hits(kind) / total if total else None

    def uptime(self) -> float:
        return max(0.0, self._clock() - self.started)

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """``(metric name, labels, value)`` rows, Prometheus style, sorted."""
        rows: list[tuple[str, dict[str, str], float]] = [
            ("spacy_index_cache_requests_total", {"kind": kind, "outcome": outcome}, float(n))
            for (kind, outcome), n in sorted(self._counts.items())
        ]
        rows.append(("spacy_index_start_time_seconds", {}, self.started))
        return rows


def cache_kind(path: str) -> str:
    return "metadata" if path.endswith(".metadata") else "file"


class CountCache:
    """ASGI middleware: count the cache outcome each route recorded, as its answer starts
    (so a client that has the answer sees it counted)."""

    def __init__(self, app: ASGIApp, stats: CacheStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        counted = False

        def count() -> None:
            nonlocal counted
            outcome = state.get("cache")
            if not counted and isinstance(outcome, str):
                counted = True
                self.stats.record(cache_kind(scope.get("path", "")), outcome)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                count()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            count()
