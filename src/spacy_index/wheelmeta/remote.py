"""The core metadata of a wheel on an HTTP server, read *without downloading it*.

One suffix ``Range`` request fetches the tail of the file (end of central directory, usually
the central directory itself and, for wheels whose ``.dist-info`` comes last, the METADATA
member too); at most one more request fetches a missing part of the central directory and one
more the METADATA member. A 450 MB model wheel costs one or two requests and about 64 KiB.
:class:`_Session` keeps the bookkeeping free of I/O; the plan is :mod:`.ranges`.
"""

from __future__ import annotations

import asyncio
import zipfile
from dataclasses import dataclass

import httpx

from spacy_index.errors import BadRangeResponse, MetadataError, RangeNotSupported
from spacy_index.gcpause import gc_paused
from spacy_index.http import parse_content_range, redact_url
from spacy_index.model import parse_filename
from spacy_index.wheelmeta.ranges import Plan, metadata_plan

#: Bytes fetched from the end of a remote wheel by the first request.
DEFAULT_TAIL = 65536
#: larger range answers are parsed in a worker thread by the async reader
_PARSE_ON_LOOP = 256 * 1024


@dataclass(frozen=True)
class RemoteMetadata:
    """What :func:`metadata_from_remote_wheel` read, and what it cost."""

    #: the exact bytes of the METADATA member
    metadata: bytes
    #: response body bytes received (every response, redirects included)
    bytes_transferred: int
    #: HTTP requests made (each redirect hop counts)
    requests: int
    #: the size of the wheel, from ``Content-Range``
    size: int = 0


_RETRY_ORIGINAL = frozenset({401, 403, 404, 410})


class _Session:
    """The I/O-free bookkeeping of one remote read: headers to send, checks of responses,
    counters, the plan. The reader only moves bytes."""

    def __init__(self, url: str, filename: str, size: int | None, tail: int) -> None:
        if tail < zipfile.sizeEndCentDir:
            raise ValueError(f"tail must be at least {zipfile.sizeEndCentDir} bytes, not {tail}")
        parse_filename(filename)  # an invalid filename is the caller's error: fail first
        self.url = url
        self.filename = filename
        self.size = size
        self.tail = tail
        self.total: int | None = None
        self.final_url: str | None = None
        self.etag: str | None = None
        self.requests = 0
        self.transferred = 0
        self.plan: Plan | None = None
        self.metadata: bytes | None = None

    # errors ------------------------------------------------------------- #
    def error(self, cls: type[MetadataError], reason: str, status: int | None = None) -> MetadataError:
        return cls(reason, filename=self.filename, source=redact_url(self.url), status=status)

    def contextualize(self, exc: MetadataError) -> MetadataError:
        return exc.with_context(filename=self.filename, source=redact_url(self.url))

    # requests ----------------------------------------------------------- #
    def first_request(self) -> tuple[str, dict[str, str]]:
        return self.url, {"Range": f"bytes=-{self.tail}", "Accept-Encoding": "identity"}

    def urls(self) -> list[str]:
        """Where to send a follow-up request: the redirect target first (saves the redirect),
        then, if that target refuses (an expired signed URL), the original URL again."""
        if self.final_url and self.final_url != self.url:
            return [self.final_url, self.url]
        return [self.url]

    def range_headers(self, start: int, end: int) -> dict[str, str]:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        if self.etag:
            headers["If-Range"] = self.etag
        return headers

    # responses ---------------------------------------------------------- #
    def count(self, response: httpx.Response) -> None:
        self.requests += 1 + len(response.history)
        self.transferred += sum(r.num_bytes_downloaded for r in response.history)

    def retry_elsewhere(self, response: httpx.Response, url: str) -> bool:
        return response.status_code in _RETRY_ORIGINAL and url != self.url

    def check_first(self, response: httpx.Response) -> int:
        """Validate the answer to the suffix range request; returns the body length to read."""
        if response.status_code == 200:
            raise RangeNotSupported(redact_url(self.url), filename=self.filename)
        start, end, total = self._check_partial(response)
        if total is None:
            raise self.error(BadRangeResponse, "the server did not say the file's size")
        if self.size is not None and total != self.size:
            raise self.error(
                BadRangeResponse, f"the file has {total} bytes, expected {self.size}"
            )
        if (start, end) != (max(0, total - self.tail), total - 1):
            raise self.error(
                BadRangeResponse,
                f"asked for the last {self.tail} bytes of {total}, got bytes {start}-{end}",
            )
        self.total = total
        self.final_url = str(response.url)
        etag = response.headers.get("ETag")
        self.etag = etag if etag and not etag.startswith("W/") else None
        return end - start + 1

    def check_followup(self, response: httpx.Response, start: int, end: int) -> int:
        if response.status_code == 200:
            raise self.error(
                BadRangeResponse, "the file changed between requests (HTTP 200 to a range request)"
            )
        got_start, got_end, total = self._check_partial(response)
        if total is not None and total != self.total:
            raise self.error(
                BadRangeResponse, f"the file changed between requests ({total} bytes, was {self.total})"
            )
        if (got_start, got_end) != (start, end - 1):
            raise self.error(
                BadRangeResponse, f"asked for bytes {start}-{end - 1}, got bytes {got_start}-{got_end}"
            )
        self.final_url = str(response.url)
        return end - start

    def _check_partial(self, response: httpx.Response) -> tuple[int, int, int | None]:
        status = response.status_code
        if status != 206:
            raise self.error(MetadataError, f"HTTP {status} to a range request", status=status)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise self.error(BadRangeResponse, f"the range came with Content-Encoding {encoding}")
        header = response.headers.get("Content-Range", "")
        parsed = parse_content_range(header)
        if parsed is None:
            raise self.error(BadRangeResponse, f"bad Content-Range {header!r}")
        start, end, total = parsed
        if total is not None and end >= total:
            raise self.error(BadRangeResponse, f"bad Content-Range {header!r}")
        return start, end, total

    def check_chunk(self, have: int, expected: int) -> None:
        if have > expected:
            raise self.error(BadRangeResponse, f"more than the {expected} bytes asked for")

    def received(self, response: httpx.Response, body: bytes, expected: int) -> None:
        self.transferred += response.num_bytes_downloaded
        if len(body) != expected:
            raise self.error(BadRangeResponse, f"got {len(body)} bytes, asked for {expected}")

    # the plan ------------------------------------------------------------ #
    def advance(self, data: bytes) -> tuple[int, int] | None:
        """Feed bytes to the plan (the tail, first); the next range to fetch, or None when done."""
        try:
            if self.plan is None:
                assert self.total is not None
                self.plan = metadata_plan(self.filename, self.total, data)
                return next(self.plan)
            return self.plan.send(data)
        except StopIteration as done:
            self.metadata = done.value
            return None

    def result(self) -> RemoteMetadata:
        assert self.metadata is not None
        return RemoteMetadata(self.metadata, self.transferred, self.requests, self.total or 0)


async def _aread(session: _Session, response: httpx.Response, expected: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        session.check_chunk(len(body), expected)
    session.received(response, bytes(body), expected)
    return bytes(body)


async def metadata_from_remote_wheel(
    client: httpx.AsyncClient,
    url: str,
    *,
    filename: str,
    size: int | None = None,
    tail: int = DEFAULT_TAIL,
) -> RemoteMetadata:
    """The METADATA of the wheel ``filename`` at ``url``, read with HTTP range requests.

    The first request asks for the last ``tail`` bytes (no HEAD first); redirects are followed
    and later requests go straight to the redirect target. ``size``, when known, is checked
    against the server's. Raises :class:`RangeNotSupported` (body unread) when the server
    ignores ``Range``, other :class:`MetadataError` subclasses for bad answers or a bad wheel;
    transport errors (``httpx.TransportError``) propagate unchanged.
    """
    s = _Session(url, filename, size, tail)
    try:
        first_url, headers = s.first_request()
        async with client.stream("GET", first_url, headers=headers, follow_redirects=True) as r:
            s.count(r)
            data = await _aread(s, r, s.check_first(r))
        # a big central directory (100k members: 6 MB, a second of parsing) off the loop
        while (want := (s.advance(data) if len(data) <= _PARSE_ON_LOOP
                        else await asyncio.to_thread(_advance_without_gc, s, data))) is not None:
            for target in s.urls():
                async with client.stream(
                    "GET", target, headers=s.range_headers(*want), follow_redirects=True
                ) as r:
                    s.count(r)
                    if s.retry_elsewhere(r, target):
                        continue
                    data = await _aread(s, r, s.check_followup(r, *want))
                    break
    except MetadataError as e:
        if e.filename and e.source:
            raise
        raise s.contextualize(e) from e.__cause__
    return s.result()


def _advance_without_gc(session: _Session, data: bytes) -> tuple[int, int] | None:
    with gc_paused():
        return session.advance(data)
