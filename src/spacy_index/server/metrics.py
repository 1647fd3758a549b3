"""Prometheus metrics (``/metrics``) and the Kubernetes probes (``/health``, ``/ready``).

One :class:`Metrics` per :class:`~spacy_index.server.state.Server`, with its own
``CollectorRegistry`` (nothing is registered globally, so one process can run several
servers). What is counted where:

* **Requests** (by route kind, method, status), **latency** and **bytes sent**: in
  ``AccessLog`` (accesslog.py), which already has the status, the bytes and the duration of every
  request the app answers, and in its ``log_fast`` for the pages the protocol answers without
  a task (``Server.fast_response``). Both only add to plain ints in dicts (the event loop is
  the only writer); a collector turns them into samples at scrape time. A fast-path answer is
  written synchronously from the parser callback, so it is counted in the lowest latency
  bucket (it takes microseconds) and adds nothing to the histogram's sum.
* **Cache hits/misses**: the catalogue's :class:`~spacy_index.server.stats.CacheStats`
  (``Server.cache_stats``), exported as they are; bytes served by cache outcome from the
  access log's numbers.
* **Upstream** requests, bytes, errors and latency by source: a transport wrapper on each
  source's httpx client (:func:`spacy_index.http.wrap_transports`); the file cache downloads
  through the same clients. GitHub catalog loads (their own blocking client, in a thread) are
  counted as loads per source, with their duration.
* **Single flight**: downloads in flight (``FileCache`` flights) and the requests being
  served from one right now (a ``miss`` whose answer has started and not ended).
* **Evictions**: :meth:`Metrics.count_eviction`, or :func:`count_eviction` for code that
  only knows the cache folder.
* **Cache size**: bytes and files below ``<cache>/files`` and ``<cache>/metadata``, from a
  walk of the folder at most every ``disk_interval`` seconds (in a worker thread, before the
  scrape is answered).
* **Catalog age**: seconds since each catalog source last loaded its catalog successfully.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from spacy_index.http import wrap_transports
from spacy_index.server.metrics_families import Counts, LatencyCounts, WeakCollector
from spacy_index.server.metrics_transport import MeteredTransport, replay
from spacy_index.server.sources.fetch import PageFetcher
from spacy_index.singleflight import SingleFlight

#: route kinds, the ``kind`` label of the request metrics
KINDS = ("page", "file", "metadata", "json", "health", "metrics", "other")
UPSTREAM_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: methods counted by name; anything else is ``other`` (the label set stays bounded)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
DISK_INTERVAL = 30.0
#: the classic text format (every Prometheus 2.x and 3.x reads it; the names here need
#: nothing newer)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: every live Metrics, for :func:`count_eviction` (empty at import; entries go with their server)
_LIVE: weakref.WeakSet[Metrics] = weakref.WeakSet()
#: the clients whose transports are metered already (a client is metered once)
_METERED: weakref.WeakSet[Any] = weakref.WeakSet()  #: clients and page fetchers


def route_kind(path: str) -> str:
    """The ``kind`` label of a request path (the routes of ``create_app``)."""
    if path.startswith("/simple/"):
        return "json" if path.startswith("/simple/pypi/") and path.endswith("/json") else "page"
    if path.startswith("/files/"):
        return "metadata" if path.endswith(".metadata") else "file"
    if path.endswith("/json") and (path.startswith("/pypi/") or path.count("/") == 2):
        return "json"
    if path == "/health" or path == "/ready":
        return "health"
    if path == "/metrics":
        return "metrics"
    return "other"

class Metrics:
    """The counters of one server, and its registry (``render()`` is the ``/metrics`` body)."""

    def __init__(self, server: Any, *, disk_interval: float = DISK_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.cache_dir = Path(server.cache_dir)
        self.disk_interval = disk_interval
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        # hot path: plain ints (see the module docstring)
        self._requests: dict[tuple[str, str, int], int] = {}
        self._sent: dict[str, int] = {}
        self._durations: dict[str, LatencyCounts] = {}
        self._served: dict[tuple[str, str], int] = {}
        #: fast-path answers: method -> status -> count, and their body bytes; ``AccessLog``
        #: updates them inline (no call, no tuple per request: nothing for the GC to track)
        self.fast_counts: dict[str, dict[int, int]] = {"GET": {}, "HEAD": {}}
        self.fast_sent = [0]
        #: requests streaming a file whose download is still running (or just ended)
        self.flight_consumers = 0
        self._add_instruments(self.registry)
        self._upstream_children: dict[str, tuple[Any, Any]] = {}
        #: source name -> (monotonic time of the last successful load, last outcome)
        self._catalogs: dict[str, tuple[float | None, str]] = {}
        self._upstream_last: dict[str, bool] = {}
        #: background catalog loads started by /ready, one per source at a time
        self._loading: SingleFlight[str, None] = SingleFlight()
        self._disk: dict[str, tuple[int, int]] = {}
        self._disk_at: float | None = None
        #: the walk of the cache folder running now, shared by concurrent scrapes
        self._walks: SingleFlight[None, None] = SingleFlight()
        self.registry.register(WeakCollector(self))  # type: ignore[arg-type]
        _LIVE.add(self)

    def _add_instruments(self, reg: CollectorRegistry) -> None:
        """The ordinary prometheus_client instruments: thread-safe, as evictions and catalog
        loads happen in worker threads."""
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        def seconds(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, ["source"], buckets=UPSTREAM_BOUNDS, registry=reg)

        self.upstream_requests = counter(
            "spacy_index_upstream_requests", "Requests to upstream sources that got an answer, "
            "by source and HTTP status", "source", "status")
        self.upstream_errors = counter(
            "spacy_index_upstream_errors", "Upstream requests that failed without an answer "
            "(connection, timeout, broken body), by source and error", "source", "error")
        self.upstream_bytes = counter(
            "spacy_index_upstream_bytes", "Body bytes received from upstream sources", "source")
        self.upstream_seconds = seconds(
            "spacy_index_upstream_request_duration_seconds", "Time from sending an upstream "
            "request to its response headers, by source")
        self.catalog_loads = counter(
            "spacy_index_catalog_loads", "Catalog loads of GitHub sources (ok, error, or "
            "snapshot: the bundled offline snapshot stood in)", "source", "outcome")
        self.catalog_seconds = seconds(
            "spacy_index_catalog_load_duration_seconds", "Duration of catalog loads")
        self.evictions = counter(
            "spacy_index_cache_evictions", "Cache entries evicted, by kind", "kind")
        self.evicted_bytes = counter(
            "spacy_index_cache_evicted_bytes", "Bytes evicted from the cache, by kind", "kind")
        self.auth_failures = counter(
            "spacy_index_auth_failures", "Refused client authentications: bad (wrong "
            "credentials), blocked (429: too many failures from the client's address)", "reason")
        # zero rows from the start, so a dashboard's rate() has a baseline
        for kind in ("file", "metadata"):
            self.evictions.labels(kind)
            self.evicted_bytes.labels(kind)
        for reason in ("bad", "blocked"):
            self.auth_failures.labels(reason)

    # -- requests (hot path) ------------------------------------------------ #
    def count(self, scope: Scope, status: int, sent: int, seconds: float) -> None:
        """One request the app answered (``AccessLog``)."""
        kind = route_kind(scope["path"])
        method = scope["method"]
        if method not in METHODS:
            method = "other"
        key = (kind, method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        self._sent[kind] = self._sent.get(kind, 0) + sent
        hist = self._durations.get(kind)
        if hist is None:
            hist = self._durations[kind] = LatencyCounts()
        hist.observe(seconds)
        outcome = scope["state"].get("cache")
        if isinstance(outcome, str) and (kind == "file" or kind == "metadata"):
            served = (kind, outcome)
            self._served[served] = self._served.get(served, 0) + sent

    def count_fast(self, method: str, status: int, sent: int) -> None:
        """One page the protocol answered itself (``AccessLog.log_fast``): two dict updates."""
        counts = self.fast_counts.get(method)
        if counts is None:  # the protocol only answers GET and HEAD
            counts = self.fast_counts.setdefault(method if method in METHODS else "other", {})
        counts[status] = counts.get(status, 0) + 1
        self.fast_sent[0] += sent

    def response_started(self, scope: Scope) -> bool:
        """A file answer starts: True (and counted) when it streams from a running download."""
        if scope["state"].get("cache") == "miss" and route_kind(scope["path"]) == "file":
            self.flight_consumers += 1
            return True
        return False

    def response_ended(self) -> None:
        self.flight_consumers -= 1

    # -- evictions ------------------------------------------------------------ #
    def count_eviction(self, kind: str, nbytes: int) -> None:
        """One cache entry of ``kind`` (``file`` or ``metadata``) and ``nbytes`` evicted."""
        self.evictions.labels(kind).inc()
        if nbytes > 0:
            self.evicted_bytes.labels(kind).inc(nbytes)

    # -- upstream ------------------------------------------------------------- #
    def instrument(self, source: Any) -> None:
        """Meter ``source``'s HTTP client and (GitHub sources) its catalog loads."""
        name = source.name
        # every client the source holds (pages and files may have pools of their own)
        for client in list(vars(source).values()):
            if (isinstance(client, httpx.AsyncClient) and client not in _METERED
                    and wrap_transports(client, lambda t: MeteredTransport(t, self, name))):
                _METERED.add(client)
            elif isinstance(client, PageFetcher) and client not in _METERED:
                client.instrument(lambda t: MeteredTransport(t, self, name),
                                  lambda events: replay(self, name, events))
                _METERED.add(client)
        source.wrap_loads(lambda load, outcome: self._timed_load(name, load, outcome))

    def _timed_load(self, name: str, load: Callable[[], Any], outcome: str) -> Callable[[], Any]:
        def timed() -> Any:
            start = time.perf_counter()
            try:
                catalog = load()
            except BaseException:
                self.catalog_loads.labels(name, "error").inc()
                previous = self._catalogs.get(name, (None, "error"))[0]
                self._catalogs[name] = (previous, "error")
                raise
            finally:
                self.catalog_seconds.labels(name).observe(time.perf_counter() - start)
            self.catalog_loads.labels(name, outcome).inc()
            self._catalogs[name] = (self._clock(), outcome)
            return catalog

        return timed

    def _upstream(self, source: str) -> tuple[Any, Any]:
        children = self._upstream_children.get(source)
        if children is None:
            children = self._upstream_children[source] = (
                self.upstream_bytes.labels(source), self.upstream_seconds.labels(source))
        return children

    def upstream_answered(self, source: str, status: int, seconds: float) -> None:
        self.upstream_requests.labels(source, str(status)).inc()
        self._upstream(source)[1].observe(seconds)
        self._upstream_last[source] = True

    def upstream_read(self, source: str, nbytes: int) -> None:
        self._upstream(source)[0].inc(nbytes)

    def upstream_failed(self, source: str, error: BaseException | str,
                        seconds: float | None) -> None:
        kind = error if isinstance(error, str) else type(error).__name__
        self.upstream_errors.labels(source, kind).inc()
        if seconds is not None:
            self._upstream(source)[1].observe(seconds)
        self._upstream_last[source] = False

    # -- catalogs and readiness ---------------------------------------------- #
    def catalog_age(self, name: str, source: Any) -> float | None:
        """Seconds since ``source`` last loaded its catalog successfully (None: never)."""
        loaded_at = source.loaded_at
        if loaded_at is None:
            return None
        loaded = self._catalogs.get(name, (None, ""))[0]
        if loaded is None:  # loaded before it was instrumented
            loaded = loaded_at
        return max(0.0, self._clock() - loaded)

    def start_loading(self, name: str, source: Any) -> None:
        """Load a catalog nobody asked for yet, in the background (once at a time)."""
        async def load() -> None:
            with contextlib.suppress(Exception):  # logged by the source; /ready says "failed"
                await source.catalog()

        with contextlib.suppress(RuntimeError):  # no running loop
            self._loading.start(name, load)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)`` for ``/ready``: not ready while a GitHub source has never loaded
        its catalog (its load is started here); stale-but-serving sources are ready."""
        server = self.server
        states: dict[str, dict[str, Any]] = {}
        waiting: list[str] = []
        sources = dict(server.sources)
        sources.setdefault(server.upstream.name, server.upstream)
        for name, source in sources.items():
            cfg = getattr(source, "cfg", None)
            entry: dict[str, Any] = {"kind": getattr(cfg, "kind", "simple")}
            if source.holds_catalog:
                age = self.catalog_age(name, source)
                if age is None:
                    entry["state"] = "failed" if source.failing else "loading"
                    waiting.append(name)
                    self.start_loading(name, source)
                else:
                    last = self._catalogs.get(name, (None, "ok"))[1]
                    entry["state"] = {"error": "stale", "snapshot": "snapshot"}.get(last, "ready")
                    entry["catalog_age_seconds"] = round(age, 1)
            elif (local := source.local_state()) is not None:  # a folder: one stat
                entry["state"] = local
            else:
                last_ok = self._upstream_last.get(name)
                entry["state"] = "unreachable" if last_ok is False else "ready"
            states[name] = entry
        ready = not waiting
        return ready, {"status": "ready" if ready else "not ready", "not_ready": waiting,
                       "sources": states}

    # -- the cache folder ----------------------------------------------------- #
    def disk_due(self) -> bool:
        return self._disk_at is None or self._clock() - self._disk_at >= self.disk_interval

    async def refresh_disk(self) -> None:
        """Walk the cache folder (in a worker thread) if the last walk is older than
        ``disk_interval``; concurrent scrapes share one walk."""
        if self.disk_due():
            await self._walks.run(None, self._walk)

    async def _walk(self) -> None:
        self._disk = await asyncio.to_thread(self._scan)
        self._disk_at = self._clock()

    def _scan(self) -> dict[str, tuple[int, int]]:
        return {kind: _folder_usage(self.cache_dir / sub)
                for kind, sub in (("file", "files"), ("metadata", "metadata"))}

    # -- output --------------------------------------------------------------- #
    def counts(self) -> Counts:
        """A copy of the hot path's counters, for the ``/metrics`` families."""
        return Counts(requests=dict(self._requests), sent=dict(self._sent),
                      durations=dict(self._durations), served=dict(self._served),
                      disk=dict(self._disk))

    def render(self) -> bytes:
        return generate_latest(self.registry)

def _folder_usage(root: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files below ``root`` (temporary dot-files left out)."""
    nbytes = nfiles = 0
    stack = [str(root)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                        nbytes += entry.stat(follow_symlinks=False).st_size
                        nfiles += 1
                except OSError:  # removed while walking
                    continue
    return nbytes, nfiles


def count_eviction(kind: str, nbytes: int, root: str | os.PathLike[str] | None = None) -> None:
    """Count an eviction for the server(s) whose cache folder is ``root`` (or holds it); all
    servers of this process when ``root`` is None. For code that has no Server at hand."""
    where = os.path.abspath(root) if root is not None else None
    for metrics in list(_LIVE):
        mine = os.path.abspath(metrics.cache_dir)
        if where is None or where == mine or where.startswith(mine + os.sep):
            metrics.count_eviction(kind, nbytes)


# --------------------------------------------------------------------------- routes
def observability_routes(server: Any, *, metrics: bool = True) -> list[Route]:
    """``/ready`` (and ``/metrics`` unless ``metrics`` is off) for ``create_app``; ``/health``
    stays the app's own."""
    m: Metrics = server.metrics

    async def ready(request: Request) -> Response:
        ok, body = m.readiness()
        return JSONResponse(body, status_code=200 if ok else 503,
                            headers={"Cache-Control": "no-store"})

    async def metrics_page(request: Request) -> Response:
        if m.disk_due():
            await m.refresh_disk()
        return Response(m.render(), media_type=CONTENT_TYPE,
                        headers={"Cache-Control": "no-store"})

    routes = [Route("/ready", ready)]
    if metrics:
        routes.append(Route("/metrics", metrics_page))
    return routes


__all__ = ["KINDS", "Metrics", "count_eviction", "observability_routes", "route_kind"]
