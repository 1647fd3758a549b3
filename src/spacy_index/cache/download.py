"""The resumable download of one file into the cache's partial file (one :class:`Flight`).

* The partial file is append-only: bytes that were published are never rewritten.
* A broken connection is resumed with ``Range: bytes=<n>-`` and ``If-Range`` (the first
  answer's strong ETag, else its Last-Modified), against the signed URL the first request was
  redirected to. A ``401``/``403``/``410`` from that signed URL (it expired) sends the next
  attempt back to :attr:`Upstream.url` for a fresh redirect, still with ``Range``. A ``206`` is
  only accepted if its ``Content-Range`` starts exactly at the offset and its total agrees.
* A ``200`` to a ranged request means the validator no longer matched (the resource changed)
  or the server ignores ranges. The new body is then read from byte 0, but its first ``n``
  bytes are *compared* with what is already on disk instead of being written (the running hash
  already covers them, and the bytes are proven identical); writing and hashing resume at
  byte ``n``. If they differ, consumers may already hold the old bytes, so the flight fails
  with :class:`UpstreamChanged` (not remembered: the next request starts a fresh download).
  The same fallback (a plain ``GET``) is used after a ``206`` for the wrong range.
* With ``resume`` (see :class:`~spacy_index.cache.store.FileCache`) an earlier run's partial
  file is re-hashed and only the rest is asked for (``Range``, no ``If-Range``: the content is
  named by its hash, and the final check still covers every byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx

from spacy_index.cache.partial import (
    first_difference,
    in_thread,
    resume_from_disk,
    strerror,
    write_and_hash,
)
from spacy_index.errors import (
    CacheWriteError,
    DigestMismatch,
    SizeMismatch,
    UpstreamChanged,
    UpstreamFileError,
)
from spacy_index.http import (
    describe_error,
    parse_content_range,
    redact_url,
    unsatisfied_range_length,
)

__all__ = ["Download", "Flight", "Upstream", "abandoned"]

_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
#: Answers of an expired or revoked signed URL: go back to ``Upstream.url`` for a fresh one.
_REFRESH = frozenset({401, 403, 410})


@dataclass(frozen=True)
class Upstream:
    """Where a file comes from and what it must be."""

    url: str  #: e.g. a GitHub ``browser_download_url`` (302s to a short-lived signed URL)
    filename: str
    #: expected, lower hex; None for a file its index lists with no hash: it is then cached
    #: *unverified*, under the sha256 of what arrived, and found again by its URL
    sha256: str | None
    size: int | None = None  #: expected size, if known

    @property
    def key(self) -> str:
        """The flight's key: the sha256, or for an unverified file ``u-`` + sha256(url)."""
        if self.sha256 is not None:
            return self.sha256
        return "u-" + hashlib.sha256(self.url.encode("utf-8", "surrogatepass")).hexdigest()


class _Retry(Exception):
    def __init__(self, reason: str, *, full: bool) -> None:
        self.reason = reason
        self.full = full  # retry with a plain GET instead of a range request


class _Refresh(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Complete(Exception):
    """A resumed range starts at the end: the kept partial file already holds every byte."""


def raise_shared(exc: BaseException) -> NoReturn:
    """Raise an exception that is shared by several consumers (fresh traceback each time)."""
    raise exc.with_traceback(None)


def _describe(exc: BaseException) -> str:
    return _USERINFO.sub("***@", describe_error(exc).splitlines()[0])


def _content_length(resp: httpx.Response) -> int | None:
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _validator(resp: httpx.Response) -> str | None:
    """What to send as ``If-Range``: a strong ETag, else Last-Modified."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


# --------------------------------------------------------------------------- #
# A download in progress
# --------------------------------------------------------------------------- #
class Flight:
    """The state of one download, shared by its writer and every consumer tailing it."""

    def __init__(self, up: Upstream, fd: int, partial: Path) -> None:
        self.up = up
        self.key = up.key
        #: the stored file's sha256: the expected one, or (unverified) what arrived
        self.sha: str | None = up.sha256
        self.fd = fd  #: the writer's descriptor; readers dup it; closed when the flight ends
        self.partial = partial
        self.hasher = hashlib.sha256()
        self.total: int | None = None  #: from the first usable answer (or ``up.size``)
        self.written = 0  #: contiguous bytes on disk from offset 0
        self.published = 0  #: bytes consumers may read (≤ written - chunk_size until verified)
        self.upstream_bytes = 0  #: body bytes received from upstream, all attempts
        self.started = False  #: a usable answer arrived; ``total`` is final
        self.done = False
        self.ok = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        #: resume mode: bytes found from an earlier run, and whether an early stop keeps the file
        self.resumed_from = 0
        self.keep_partial = False
        #: consumers waiting for its bytes (streams, ``ensure``; a prefetch does not count)
        self.consumers = 0
        #: cancelled to make room for a wanted download (see FileCache.max_flights)
        self.dropped = False
        self._changed = asyncio.Event()

    def wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changed(self) -> None:
        await self._changed.wait()

    def begin(self, total: int | None) -> None:
        """The size is known (or known to be unknown): consumers waiting to start may go."""
        self.total, self.started = total, True
        self.wake()

    def verify(self) -> str:
        """The finished download's sha256, once it and the size are what upstream promised."""
        up = self.up
        if up.size is not None and self.written != up.size:
            raise SizeMismatch(up.filename, up.size, self.written)
        actual = self.hasher.hexdigest()
        if up.sha256 is not None and actual != up.sha256:
            raise DigestMismatch(up.filename, up.sha256, actual)
        return actual

    def end(self) -> None:
        """Close the partial file (removed unless stored or kept for a resume) and wake every
        consumer for the last time."""
        if not self.ok and not (self.keep_partial and self.written > 0):
            with contextlib.suppress(OSError):
                os.unlink(self.partial)
        os.close(self.fd)
        self.done = True
        self.wake()


def abandoned(flights: Iterable[Flight], max_flights: int) -> list[Flight]:
    """The oldest running flights no consumer waits for any more, as many as must stop for
    one more to start within ``max_flights``."""
    running = [fl for fl in flights if not fl.done and not fl.dropped]
    excess = len(running) + 1 - max_flights
    idle = [fl for fl in running
            if fl.consumers <= 0 and fl.task is not None and not fl.task.done()]
    return idle[:max(0, excess)]


class Download:
    """Fetches one flight's bytes into its partial file, resuming over broken connections
    (and first taking up an earlier run's bytes when the flight keeps its partial file).

    ``root`` only names the cache in a :class:`CacheWriteError`; ``say`` gets one-line
    progress messages (started, resumed, URL refreshed).
    """

    def __init__(self, fl: Flight, client: httpx.AsyncClient, *, chunk_size: int,
                 max_resumes: int, root: Path, say: Callable[[str], None]) -> None:
        self.fl = fl
        self.client = client
        self.chunk_size = chunk_size
        self.max_resumes = max_resumes
        self.root = root
        self.say = say
        self.url = fl.up.url  #: where the next request goes: the signed URL once we have one
        self.validator: str | None = None
        self.use_range = False

    def _failed(self, detail: str) -> UpstreamFileError:
        return UpstreamFileError(self.fl.up.filename, None, redact_url(self.fl.up.url), detail)

    async def run(self) -> None:
        fl, up = self.fl, self.fl.up
        if fl.keep_partial:
            await in_thread(resume_from_disk, fl, self.chunk_size)
        self.say(f"downloading {up.filename}" + (
            f" (resuming at byte {fl.resumed_from:,})" if fl.resumed_from else ""))
        self.use_range = fl.written > 0  # resuming an earlier run's partial file
        if self.use_range and up.size is not None and fl.written >= up.size:
            fl.begin(up.size)
            return
        attempts = 0
        while True:
            try:
                problem, full, progressed = await self._attempt()
            except _Refresh as exc:
                self.say(f"{up.filename}: the signed URL answered {exc.status}; "
                         "getting a fresh one")
                self.url = up.url
                self.use_range = True
                continue
            except _Complete:
                if not fl.started:
                    fl.begin(fl.written)
                return
            if problem is None:
                return
            attempts += 1
            if attempts > self.max_resumes:
                raise self._failed(f"gave up after {attempts} attempts ({problem})")
            self.use_range = not full
            self.say(f"{up.filename}: {problem}; retrying from byte "
                     f"{fl.written if self.use_range else 0} ({attempts}/{self.max_resumes})")
            if not progressed:
                await asyncio.sleep(min(0.25 * 2 ** (attempts - 1), 5.0))

    async def _attempt(self) -> tuple[str | None, bool, bool]:
        """One request: (why another is needed, or None when the file is complete; whether
        that one must be a plain ``GET``; whether any body bytes arrived)."""
        fl = self.fl
        offset = fl.written
        ranged = self.use_range and offset > 0
        headers = {"Accept-Encoding": "identity"}
        if ranged:
            headers["Range"] = f"bytes={offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        buf = bytearray()
        pos = compare_upto = 0
        problem: str | None = None
        full = False
        try:
            async with self.client.stream("GET", self.url, headers=headers,
                                          follow_redirects=True) as resp:
                pos = self._accept(resp, ranged, offset)
                if pos == 0:
                    self.validator = _validator(resp)
                self.url = str(resp.url)
                # a full body after we already have bytes: compare, don't rewrite
                compare_upto = offset if pos < offset else 0
                async for piece in resp.aiter_raw():
                    fl.upstream_bytes += len(piece)
                    buf += piece
                    if len(buf) >= self.chunk_size:
                        pos = await self._store(buf, pos, compare_upto)
                        buf = bytearray()
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
            raise self._failed(_describe(exc)) from None
        except httpx.TransportError as exc:
            problem = _describe(exc)
        except _Retry as exc:
            problem, full = exc.reason, exc.full
        except httpx.HTTPError as exc:
            raise self._failed(_describe(exc)) from None
        progressed = bool(buf)
        if buf:  # what arrived before the connection broke is good: keep it
            pos = await self._store(buf, pos, compare_upto)
        if problem is None:
            if pos < compare_upto:
                raise UpstreamChanged(fl.up.filename, "a new answer is shorter than the first")
            if fl.total is None or fl.written >= fl.total:
                return None, False, progressed
            problem = f"the body ended at byte {fl.written} of {fl.total}"
        return problem, full, progressed

    def _accept(self, resp: httpx.Response, ranged: bool, offset: int) -> int:
        """Check an answer's status and size; returns the offset of its first body byte."""
        fl, up = self.fl, self.fl.up
        status = resp.status_code
        total: int | None
        if status == 206:
            want = offset if ranged else 0
            span = parse_content_range(resp.headers.get("Content-Range"))
            if span is None or span[0] != want:
                raise _Retry(f"a 206 for {resp.headers.get('Content-Range')!r}, "
                             f"not bytes {want}-", full=True)
            start, _last, total = span
        elif status == 200:
            start, total = 0, _content_length(resp)
        elif status in _REFRESH and self.url != up.url:
            raise _Refresh(status)
        elif status == 416 and ranged:
            if unsatisfied_range_length(resp.headers.get("Content-Range", "")) == offset:
                raise _Complete
            raise _Retry("HTTP 416 for a resumed range", full=True)
        elif status in (408, 425, 429) or status >= 500:
            raise _Retry(f"HTTP {status}", full=False)
        else:
            raise UpstreamFileError(up.filename, status, redact_url(up.url))
        if up.size is not None and total is not None and total != up.size:
            raise SizeMismatch(up.filename, up.size, total)
        if fl.total is not None and total is not None and total != fl.total:
            raise UpstreamChanged(up.filename, f"its size went from {fl.total} to {total} bytes")
        if not fl.started:
            fl.begin(total if total is not None else up.size)
        elif fl.total is None:
            fl.total = total
        return start

    async def _store(self, buf: bytearray, pos: int, compare_upto: int) -> int:
        """Put ``buf`` (body bytes for offset ``pos``) in the partial file; returns the new
        offset. Bytes below ``compare_upto`` are already there and are only compared."""
        fl, up = self.fl, self.fl.up
        end = pos + len(buf)
        limit = up.size if up.size is not None else fl.total
        if limit is not None and end > limit:
            raise SizeMismatch(up.filename, limit, end, at_least=True)
        skip = 0
        if pos < compare_upto:
            skip = min(len(buf), compare_upto - pos)
            diff = await in_thread(first_difference, fl.fd, buf, skip, pos)
            if diff is not None:
                raise UpstreamChanged(up.filename, f"it differs from before at byte {pos + diff}")
        if skip < len(buf):
            try:
                await in_thread(write_and_hash, fl.fd, fl.hasher, buf, skip, pos + skip)
            except OSError as exc:
                raise CacheWriteError(self.root, strerror(exc)) from None
            fl.written = end
            fl.published = max(fl.published, end - self.chunk_size)
            fl.wake()
        return end
