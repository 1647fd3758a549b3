"""The ``/metrics`` samples of a :class:`~spacy_index.server.metrics.Metrics`, built at
scrape time from its plain counters (the hot path only adds to ints; this turns them into
Prometheus families), and the request-latency histogram those counters keep."""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from spacy_index._version import __version__

if TYPE_CHECKING:
    from spacy_index.server.metrics import Metrics

#: request latency buckets (seconds); a cached page takes well under the first one
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_LE = tuple(repr(float(b)) for b in BOUNDS)


class LatencyCounts:
    """Bucket counts (not cumulative) and a sum; written by the event loop only."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BOUNDS, value)] += 1
        self.sum += value


@dataclass(frozen=True)
class Counts:
    """A copy of the counters :class:`~spacy_index.server.metrics.Metrics` keeps on the
    hot path (``Metrics.counts()``): what a scrape reads."""

    #: (route kind, method, status) -> requests
    requests: dict[tuple[str, str, int], int]
    #: route kind -> body bytes sent
    sent: dict[str, int]
    durations: dict[str, LatencyCounts]
    #: (kind, cache outcome) -> bytes
    served: dict[tuple[str, str], int]
    #: kind -> (bytes, files) in the cache folder, from the last walk
    disk: dict[str, tuple[int, int]]


class WeakCollector:
    """What the registry holds: a weak reference, so a dropped server takes its counters."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = weakref.ref(metrics)

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics()
        if metrics is not None:
            yield from collect(metrics)


def collect(m: Metrics) -> Iterator[Metric]:
    """Every family of ``m``, in the order ``/metrics`` has always listed them."""
    server = m.server
    counts = m.counts()
    fast = {(method, status): n for method, counts in list(m.fast_counts.items())
            for status, n in list(counts.items())}
    yield from _request_families(m, counts, fast)
    yield from _cache_families(server)
    yield from _flight_families(m, counts, server)
    yield from _catalog_families(m, server)
    yield from _prefetch_families(server)
    info = GaugeMetricFamily("spacy_index_info", "The running spacy-index", labels=["version"])
    info.add_metric([__version__], 1.0)
    yield info


def _request_families(m: Metrics, counts: Counts,
                      fast: dict[tuple[str, int], int]) -> Iterator[Metric]:
    # fast-path answers are pages the app never saw: folded into the page rows here
    requests = counts.requests
    for (method, status), n in fast.items():
        key = ("page", method, status)
        requests[key] = requests.get(key, 0) + n
    family = CounterMetricFamily(
        "spacy_index_requests", "HTTP requests answered, by route kind, method and status "
        "(pages answered by the task-free fast path included)",
        labels=["kind", "method", "status"])
    for (kind, method, status), n in sorted(requests.items()):
        family.add_metric([kind, method, str(status)], n)
    yield family

    fast_total = sum(fast.values())
    family = CounterMetricFamily(
        "spacy_index_fast_path_responses", "Project pages answered from the rendered cache "
        "by the protocol, without a task (included in spacy_index_requests_total)")
    family.add_metric([], fast_total)
    yield family
    yield _durations_family(counts, fast_total)

    sent = counts.sent
    if m.fast_sent[0]:
        sent["page"] = sent.get("page", 0) + m.fast_sent[0]
    family = CounterMetricFamily("spacy_index_response_bytes", "Body bytes sent, by route "
                                 "kind (sendfile spans included)", labels=["kind"])
    for kind, n in sorted(sent.items()):
        family.add_metric([kind], n)
    yield family


def _durations_family(counts: Counts, fast_total: int) -> Metric:
    hist = HistogramMetricFamily(
        "spacy_index_request_duration_seconds", "Time from the request to the last byte "
        "handed to the socket, by route kind (fast-path pages: the first bucket)",
        labels=["kind"])
    durations = counts.durations
    if fast_total and "page" not in durations:
        durations["page"] = LatencyCounts()
    for kind, h in sorted(durations.items()):
        counts = list(h.counts)
        if kind == "page":
            counts[0] += fast_total
        running = 0
        buckets = []
        for le, n in zip((*_LE, "+Inf"), counts, strict=True):
            running += n
            buckets.append((le, running))
        hist.add_metric([kind], buckets, h.sum)
    return hist


def _cache_families(server: Any) -> Iterator[Metric]:
    stats = getattr(server, "cache_stats", None)
    if stats is None:
        return
    family = CounterMetricFamily(
        "spacy_index_cache_requests", "File and metadata requests by cache outcome "
        "(hit, miss, hit-unverified, miss-unverified, local, pass-through)",
        labels=["kind", "outcome"])
    hits = CounterMetricFamily("spacy_index_cache_hits", "Cache hits (verified or "
                               "not), by kind", labels=["kind"])
    misses = CounterMetricFamily("spacy_index_cache_misses", "Cache misses (one "
                                 "upstream download or metadata read), by kind",
                                 labels=["kind"])
    start = None
    for name, labels, value in stats.samples():
        if name == "spacy_index_cache_requests_total":
            family.add_metric([labels["kind"], labels["outcome"]], value)
        elif name == "spacy_index_start_time_seconds":
            start = value
    for kind in ("file", "metadata"):
        hits.add_metric([kind], stats.hits(kind))
        misses.add_metric([kind], stats.misses(kind))
    yield family
    yield hits
    yield misses
    if start is not None:
        gauge = GaugeMetricFamily("spacy_index_start_time_seconds",
                                  "When the server started (Unix time)")
        gauge.add_metric([], start)
        yield gauge


def _flight_families(m: Metrics, counts: Counts, server: Any) -> Iterator[Metric]:
    family = CounterMetricFamily("spacy_index_cache_served_bytes", "File and metadata "
                                 "bytes sent, by kind and cache outcome",
                                 labels=["kind", "outcome"])
    for (kind, outcome), n in sorted(counts.served.items()):
        family.add_metric([kind, outcome], n)
    yield family

    in_flight = getattr(server, "downloads_in_flight", None)
    flights = in_flight() if callable(in_flight) else 0
    consumers = max(0, m.flight_consumers)
    for name, doc, value in (
        ("spacy_index_cache_downloads_in_flight", "Upstream downloads running now "
         "(one per file, however many clients wait for it)", flights),
        ("spacy_index_cache_flight_consumers", "Requests being served from a download "
         "that is (or was, when they started) still running", consumers),
        ("spacy_index_cache_flight_waiters", "Flight consumers beyond the first per "
         "download: requests that single flight saved an upstream download", max(0, consumers - flights)),
    ):
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], value)
        yield gauge

    size = GaugeMetricFamily("spacy_index_cache_size_bytes", "Bytes in the cache folder, "
                             f"by kind (walked at most every {m.disk_interval:g} s)",
                             labels=["kind"])
    files = GaugeMetricFamily("spacy_index_cache_files", "Files in the cache folder, by "
                              "kind", labels=["kind"])
    for kind, (nbytes, nfiles) in sorted(counts.disk.items()):
        size.add_metric([kind], nbytes)
        files.add_metric([kind], nfiles)
    yield size
    yield files


def _prefetch_families(server: Any) -> Iterator[Metric]:
    prefetch = getattr(server, "prefetch", None)
    if prefetch is None:
        return
    family = CounterMetricFamily(
        "spacy_index_prefetched_pages", "Pages of served wheels' requirements looked up "
        "behind ([server] prefetch), by outcome: fetched, dropped (the queue was full), "
        "failed", labels=["outcome"])
    for outcome, n in sorted(prefetch.counts.items()):
        family.add_metric([outcome], n)
    yield family


def _catalog_families(m: Metrics, server: Any) -> Iterator[Metric]:
    family = GaugeMetricFamily("spacy_index_catalog_age_seconds", "Seconds since the "
                               "catalog of each GitHub source was last loaded successfully",
                               labels=["source"])
    ready = GaugeMetricFamily("spacy_index_source_ready", "1 when the source can answer "
                              "(a GitHub source: its catalog is loaded)", labels=["source"])
    for name, source in getattr(server, "sources", {}).items():
        if source.holds_catalog:
            age = m.catalog_age(name, source)
            if age is not None:
                family.add_metric([name], age)
            ready.add_metric([name], 0.0 if age is None else 1.0)
    yield family
    yield ready
