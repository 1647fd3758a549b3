"""Reading an upstream body with a cap on both its wire bytes and its decoded bytes."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Generator, Mapping
from typing import Any

import httpx

from spacy_index.errors import TooLarge, UpstreamError
from spacy_index.http import describe_error
from spacy_index.server.sources.frames import KEPT_HEADERS, Fetched

#: inflated bytes per step: a gzip bomb is never inflated more than this at once
_INFLATE_STEP = 1 << 20


class _Inflater:
    """Content-Encoding decoding with a bound: at most ``_INFLATE_STEP`` bytes per step.

    httpx inflates each network read at once (a 64 KiB read of a gzip bomb is 64 MiB, and
    ``gzip, gzip`` a gigabyte from a few KB); only ``identity``, ``gzip`` and ``deflate``,
    one of them, are accepted (what is asked for), anything else is an upstream error."""

    def __init__(self, encoding: str, what: str) -> None:
        enc = encoding.strip().lower()
        self.raw_deflate_tried = enc != "deflate"
        if enc in ("", "identity"):
            self.z: Any = None
        elif enc in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send
            self.z = zlib.decompressobj()
        else:
            raise UpstreamError(f"{what} came with an unsupported Content-Encoding {encoding!r}")
        self.what = what

    def steps(self, data: bytes) -> Generator[bytes, None, None]:
        """The decoded bytes of ``data`` (the next bytes on the wire), a step at a time."""
        while True:
            try:
                out = self.z.decompress(data, _INFLATE_STEP)
            except zlib.error as e:
                if self.raw_deflate_tried:
                    raise UpstreamError(f"{self.what} does not decode ({e})") from None
                self.raw_deflate_tried = True
                self.z = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self.raw_deflate_tried = True
            data = self.z.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < _INFLATE_STEP:  # a full step may leave more pending
                return

    def decode_into(self, body: bytearray, data: bytes, limit: int) -> bool:
        """Append the decoded bytes of ``data`` to ``body``; False as soon as ``body`` holds
        more than ``limit`` bytes (blocking: zlib releases the GIL, so this runs in a worker
        thread; only ``body``, one growing buffer, outlives a step)."""
        for out in self.steps(data):
            body += out
            if len(body) > limit:
                return False
        return True


async def read_capped(client: httpx.AsyncClient, url: str, headers: Mapping[str, str],
                      limit: int, what: str) -> tuple[httpx.Response, bytes]:
    """GET ``url`` and read at most ``limit`` bytes, counting both the bytes on the wire and
    the decoded ones, so a small gzip that expands to a gigabyte stops at ``limit`` (inflated
    1 MiB at a time, in a worker thread: the event loop never inflates)."""
    headers = {"Accept-Encoding": "gzip, deflate", **headers}
    async with client.stream("GET", url, headers=headers) as resp:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"{what} is {int(declared):,} bytes, over the {limit:,} byte limit")
        if resp.is_stream_consumed:  # a response built in memory (a test's transport)
            if len(resp.content) > limit:
                raise TooLarge(f"{what} is over the {limit:,} byte limit")
            return resp, resp.content
        inflater = _Inflater(resp.headers.get("content-encoding", ""), what)
        body = bytearray()
        try:
            async for raw in resp.aiter_raw():
                if resp.num_bytes_downloaded > limit:
                    raise TooLarge(f"{what} is over the {limit:,} byte limit")
                if inflater.z is None:
                    body += raw
                elif not await asyncio.to_thread(inflater.decode_into, body, raw, limit):
                    raise TooLarge(f"{what} is over the {limit:,} byte limit (decoded)")
                if len(body) > limit:
                    raise TooLarge(f"{what} is over the {limit:,} byte limit")
        except BaseException:
            # the exception's traceback (this frame) can outlive the call in a reference
            # cycle until the garbage collector runs: not the up to ``limit`` bytes read
            body.clear()
            raise
    return resp, bytes(body)


async def fetch_page(client: httpx.AsyncClient, url: str, headers: Mapping[str, str],
                     limit: int, what: str) -> Fetched:
    """:func:`read_capped` as a :class:`Fetched` (status, final URL, the kept headers, the
    body); a transport failure becomes one :class:`UpstreamError` line naming the host and
    the cause."""
    try:
        resp, body = await read_capped(client, url, headers, limit, what)
    except httpx.HTTPError as e:
        raise UpstreamError(describe_error(e, url)) from None
    kept = {k: resp.headers[k] for k in KEPT_HEADERS if k in resp.headers}
    return Fetched(resp.status_code, str(resp.url), kept, body)
