"""The upstream meter: an httpx transport that counts each request a source's client sends
(status, latency to the headers, body bytes, failures) into a
:class:`~spacy_index.server.metrics.Metrics`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from spacy_index.server.metrics import Metrics


class MeteredTransport(httpx.AsyncBaseTransport):
    """An httpx transport that counts each upstream request, its status, latency (to the
    response headers), body bytes and failures under ``source``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, metrics: Metrics, source: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._source = source

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        start = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as e:
            self._metrics.upstream_failed(self._source, e, time.perf_counter() - start)
            raise
        self._metrics.upstream_answered(self._source, response.status_code,
                                        time.perf_counter() - start)
        try:
            body = response.content  # already in memory (a mock transport, a cached answer)
        except httpx.ResponseNotRead:
            stream = response.stream
            if isinstance(stream, httpx.AsyncByteStream):
                response.stream = _CountingStream(stream, self._metrics, self._source)
        else:
            self._metrics.upstream_read(self._source, len(body))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> MeteredTransport:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, metrics: Metrics, source: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._source = source

    async def __aiter__(self) -> AsyncIterator[bytes]:
        metrics, source = self._metrics, self._source
        try:
            async for chunk in self._inner:
                metrics.upstream_read(source, len(chunk))
                yield chunk
        except Exception as e:
            self._metrics.upstream_failed(self._source, e, None)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


def replay(metrics: Metrics, source: str, events: list[tuple[Any, ...]]) -> None:
    """Count what a page-fetch process recorded with its own meter
    (:mod:`spacy_index.server.sources.fetch_worker`)."""
    for kind, *values in events:
        if kind == "answered":
            metrics.upstream_answered(source, *values)
        elif kind == "failed":
            metrics.upstream_failed(source, *values)
        elif kind == "read":
            metrics.upstream_read(source, *values)


__all__ = ["MeteredTransport", "replay"]
