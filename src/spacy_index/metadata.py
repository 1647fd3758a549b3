"""Core metadata (PEP 658 / PEP 714) of wheels: the bytes of ``<name>-<version>.dist-info/METADATA``.

Two ways to get them:

* :func:`metadata_from_wheel_file` reads a wheel on disk with :mod:`zipfile`.
* :func:`metadata_from_remote_wheel` reads a wheel on an HTTP server *without downloading
  it*: one suffix ``Range`` request fetches the tail of the file (end of central directory,
  usually the central directory itself and, for wheels whose ``.dist-info`` comes last, the
  METADATA member too); at most one more request fetches a missing part of the central
  directory and one more the METADATA member. A 450 MB model wheel costs one or two
  requests and about 64 KiB.

Both let :mod:`zipfile` do the ZIP parsing. The remote reader hands it a file object that
serves reads from the byte ranges fetched so far and raises :class:`NeedMoreData` for any
other range; a small sans-I/O plan (a generator that yields the byte ranges it still needs,
:func:`metadata_plan`) fetches them and tries again. Both readers refuse, before zipfile reads
it, a central directory over :data:`MAX_CENTRAL_DIRECTORY` and a METADATA member over
:data:`MAX_METADATA_SIZE`.
"""

from __future__ import annotations

import asyncio
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.errors import InvalidFilename, UpstreamError
from spacy_index.gcpause import gc_paused
from spacy_index.http import redact_url
from spacy_index.model import parse_filename

__all__ = [
    "DEFAULT_TAIL",
    "MAX_CENTRAL_DIRECTORY",
    "MAX_METADATA_SIZE",
    "BadRangeResponse",
    "CorruptWheel",
    "MetadataError",
    "NeedMoreData",
    "RangeNotSupported",
    "RemoteMetadata",
    "metadata_from_remote_wheel",
    "metadata_from_wheel_file",
    "metadata_plan",
    "select_metadata_name",
]

#: Bytes fetched from the end of a remote wheel by the first request.
DEFAULT_TAIL = 65536
#: Extra bytes requested after the METADATA member's expected end, so that a local header
#: whose extra field is longer than the central directory's rarely needs another request.
LOCAL_HEADER_SLACK = 1024
#: A METADATA member larger than this (compressed or not) is refused.
MAX_METADATA_SIZE = 32 << 20
#: the largest central directory read by HTTP ranges (a 100k-member wheel has about 8 MB),
#: or from a wheel on disk (:mod:`zipfile` would read all of it, whatever it claims)
MAX_CENTRAL_DIRECTORY = 16 << 20
#: larger range answers are parsed in a worker thread by the async reader
_PARSE_ON_LOOP = 256 * 1024

def _advance_without_gc(session: _Session, data: bytes) -> tuple[int, int] | None:
    with gc_paused():
        return session.advance(data)

_EOCD_SIZE = zipfile.sizeEndCentDir  # 22
_LOCAL_SIZE = zipfile.sizeFileHeader  # 30
#: the end records: the end of central directory, the ZIP64 locator and the ZIP64 record
_END_AREA = _EOCD_SIZE + zipfile.sizeEndCentDir64Locator + zipfile.sizeEndCentDir64
_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800
#: the compression methods the remote reader accepts for METADATA
_REMOTE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #
class MetadataError(UpstreamError):
    """The core metadata of a wheel could not be read.

    ``source`` is where the wheel was read from (a URL with any userinfo redacted, or a path);
    ``reason`` says what went wrong; ``status`` is the HTTP status when one caused it.
    """

    def __init__(
        self,
        reason: str,
        *,
        filename: str | None = None,
        source: str | None = None,
        status: int | None = None,
    ) -> None:
        self.reason = reason
        self.filename = filename
        self.source = source
        self.status = status
        super().__init__(self._message())

    def _message(self) -> str:
        what = f"the METADATA of {self.filename!r}" if self.filename else "a wheel's METADATA"
        where = f" from {self.source}" if self.source else ""
        return f"cannot read {what}{where}: {self.reason}"

    def with_context(self, *, filename: str | None = None, source: str | None = None) -> MetadataError:
        """A copy that names ``filename``/``source`` where this one does not yet."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.filename = self.filename or filename
        new.source = self.source or source
        new.args = (new._message(),)
        return new


class CorruptWheel(MetadataError):
    """The file is not a readable ZIP archive, or the METADATA member fails its CRC check."""


class BadRangeResponse(MetadataError):
    """The server answered a range request with the wrong range, size or encoding."""


class RangeNotSupported(MetadataError):
    """The server ignores ``Range`` (answers 200 with the whole file); download it instead.

    The body was not read: the caller can fall back to a full download.
    """

    def __init__(self, url: str, *, filename: str | None = None, status: int = 200) -> None:
        self.url = redact_url(url)
        super().__init__(
            f"the server does not support HTTP range requests (HTTP {status} to a Range request); "
            "download the whole file instead",
            filename=filename,
            source=self.url,
            status=status,
        )


class NeedMoreData(Exception):
    """A read of bytes ``[start, end)`` of the remote file that were not fetched yet.

    Not an error a user sees: the plan fetches the bytes and lets zipfile read again.
    (Not an :class:`OSError`, which zipfile would turn into "not a zip file".)
    """

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        super().__init__(f"need bytes {start}-{end - 1}")


class _TooBig(Exception):
    """A read of ``size`` bytes while zipfile opens an archive: its central directory (the
    only read there that is not a few bytes of the end records) is over the cap."""

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(f"a read of {size} bytes")


# --------------------------------------------------------------------------- #
# Choosing and checking the METADATA member
# --------------------------------------------------------------------------- #
def select_metadata_name(names: Iterable[str], filename: str) -> str:
    """The name of the ``METADATA`` member of the wheel ``filename`` among ``names``.

    The ``.dist-info`` directory is the top-level one whose ``<name>-<version>`` matches the
    wheel filename's project and version (normalized as in the wheel spec); if several match,
    the one with a top-level ``METADATA``.
    """
    parsed = parse_filename(filename)
    if parsed.kind != "wheel":
        raise InvalidFilename(filename, "not a wheel")
    names = set(names)
    dirs = {n.split("/", 1)[0] for n in names if "/" in n}
    dist_infos = sorted(d for d in dirs if d.endswith(".dist-info"))
    matching = [d for d in dist_infos if _dist_info_matches(d, parsed.name, parsed.version)]
    with_metadata = [d for d in matching if f"{d}/METADATA" in names]
    if len(with_metadata) == 1:
        return f"{with_metadata[0]}/METADATA"
    if len(matching) == 1:
        raise CorruptWheel(f"{matching[0]}/ has no METADATA")
    if matching:
        raise CorruptWheel(f"ambiguous .dist-info directories: {', '.join(matching)}")
    found = ", ".join(dist_infos) or "none"
    raise CorruptWheel(
        f"no .dist-info directory for {parsed.name} {parsed.version} (found: {found})"
    )


def _dist_info_matches(dirname: str, name: str, version: Version) -> bool:
    stem = dirname.removesuffix(".dist-info")
    for m in re.finditer("-", stem):
        dist, ver = stem[: m.start()], stem[m.end() :]
        if canonicalize_name(dist) != name:
            continue
        try:
            if Version(ver) == version:
                return True
        except InvalidVersion:
            if ver == str(version):
                return True
    return False


def _metadata_info(zf: zipfile.ZipFile, filename: str, *, remote: bool) -> zipfile.ZipInfo:
    """The METADATA member of the wheel ``filename`` (see :func:`select_metadata_name`),
    refused when it is encrypted, too large, or (``remote``) compressed other than stored or
    deflated."""
    info = zf.getinfo(select_metadata_name(zf.namelist(), filename))
    if info.flag_bits & _FLAG_ENCRYPTED:
        raise CorruptWheel(f"{info.filename} is encrypted")
    if remote and info.compress_type not in _REMOTE_METHODS:
        raise MetadataError(
            f"{info.filename} uses unsupported compression method {info.compress_type}"
        )
    if max(info.compress_size, info.file_size) > MAX_METADATA_SIZE:
        raise CorruptWheel(f"{info.filename} is implausibly large ({info.file_size} bytes)")
    return info


def _zip_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if text == "File is not a zip file":
        return "not a ZIP archive (no end of central directory record)"
    return text


class _CappedFile:
    """A binary file for :mod:`zipfile` whose reads of more than ``cap`` bytes raise
    :class:`_TooBig` (``cap = None``: no limit)."""

    def __init__(self, raw: Any, cap: int | None) -> None:
        self.raw = raw
        self.cap = cap

    def read(self, n: int = -1) -> bytes:
        if self.cap is not None:
            pos = self.raw.tell()
            want = n if n is not None and n >= 0 else self.raw.seek(0, 2) - pos
            self.raw.seek(pos)
            if want > self.cap:
                raise _TooBig(want)
        return self.raw.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True


# --------------------------------------------------------------------------- #
# Local files
# --------------------------------------------------------------------------- #
def metadata_from_wheel_file(path: Path, filename: str | None = None) -> bytes:
    """Byte-exact content of the wheel's ``<name>-<version>.dist-info/METADATA``.

    ``filename`` is the wheel's filename when ``path`` has another name (a temporary file).
    A central directory over :data:`MAX_CENTRAL_DIRECTORY` is refused before zipfile reads
    it into memory (a hostile upstream's 401 MiB file claiming 400 MiB).
    """
    path = Path(path)
    filename = filename or path.name
    try:
        with open(path, "rb") as raw, gc_paused():
            capped = _CappedFile(raw, MAX_CENTRAL_DIRECTORY)
            try:
                zf = zipfile.ZipFile(capped)  # type: ignore[arg-type]
            except _TooBig as big:
                raise CorruptWheel(f"the central directory claims {big.size:,} bytes, over the "
                                   f"{MAX_CENTRAL_DIRECTORY:,} byte limit") from None
            capped.cap = None
            with zf:
                return zf.read(_metadata_info(zf, filename, remote=False))
    except MetadataError as e:
        if e.filename and e.source:
            raise
        raise e.with_context(filename=filename, source=str(path)) from e.__cause__
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CorruptWheel(_zip_error(e), filename=filename, source=str(path)) from e
    except NotImplementedError as e:
        raise MetadataError(str(e), filename=filename, source=str(path)) from e


# --------------------------------------------------------------------------- #
# Remote files: a sans-I/O plan, zipfile over the bytes fetched so far
# --------------------------------------------------------------------------- #
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


class _Buffer:
    """Known byte ranges of the remote file (few, so a sorted list of segments)."""

    def __init__(self) -> None:
        self._segments: list[tuple[int, bytes]] = []

    def add(self, start: int, data: bytes) -> None:
        merged: list[tuple[int, bytes]] = []
        for s, d in sorted([*self._segments, (start, data)], key=lambda seg: seg[0]):
            if merged and s <= merged[-1][0] + len(merged[-1][1]):
                ps, pd = merged[-1]
                cut = ps + len(pd) - s
                if cut < len(d):
                    merged[-1] = (ps, pd + d[cut:])
            elif d:
                merged.append((s, d))
        self._segments = merged

    def gap(self, start: int, end: int) -> tuple[int, int] | None:
        """The first range within ``[start, end)`` not known yet, if any."""
        pos = start
        for s, d in self._segments:
            if pos >= end:
                return None
            if s + len(d) <= pos:
                continue
            if s > pos:
                return pos, min(s, end)
            pos = s + len(d)
        return (pos, end) if pos < end else None

    def get(self, start: int, end: int) -> bytes:
        for s, d in self._segments:
            if s <= start and end <= s + len(d):
                return d[start - s : end - s]
        raise AssertionError(f"bytes {start}-{end} not buffered")  # pragma: no cover


class _RangeFile(io.RawIOBase):
    """The remote file as :mod:`zipfile` sees it: ``total`` bytes, of which reads are served
    from ``buf``; a read of bytes not fetched yet raises :class:`NeedMoreData` (the position
    is kept, so zipfile can simply be called again once they are). Reads of more than
    ``cap`` bytes raise :class:`_TooBig` (``cap = None``: no limit)."""

    def __init__(self, buf: _Buffer, total: int) -> None:
        super().__init__()
        self.buf = buf
        self.total = total
        self.pos = 0
        self.cap: int | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = offset + (0, self.pos, self.total)[whence]
        if pos < 0:
            raise OSError(22, "negative seek position")  # as a real file (zipfile expects it)
        self.pos = pos
        return pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        start = min(self.pos, self.total)
        end = self.total if n is None or n < 0 else min(self.total, start + n)
        if self.cap is not None and end - start > self.cap:
            raise _TooBig(end - start if n is None or n < 0 else n)
        gap = self.buf.gap(start, end)
        if gap is not None:
            raise NeedMoreData(*gap)
        self.pos = end
        return self.buf.get(start, end) if end > start else b""

    def readinto(self, b: Any) -> int:  # pragma: no cover - zipfile calls read()
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


#: A plan yields ``(start, end)`` (half-open) ranges to fetch, is sent their bytes, and
#: returns the METADATA.
_Plan = Generator[tuple[int, int], bytes, bytes]


def metadata_plan(filename: str, total: int, tail: bytes) -> _Plan:
    """The METADATA of the wheel ``filename`` (``total`` bytes, of which ``tail`` ends it),
    as a sans-I/O plan: it yields each ``(start, end)`` range it needs, is sent its bytes,
    and returns the METADATA (``StopIteration.value``). Raises :class:`MetadataError`.

    The ranges: the end records if ``tail`` is shorter than them; the part of the central
    directory that is not in the tail (refused over :data:`MAX_CENTRAL_DIRECTORY`); the
    METADATA member, guessing that its local header is as long as its central directory
    entry, plus :data:`LOCAL_HEADER_SLACK`; the rest of the member if the guess was short.
    """
    try:
        return (yield from _plan(filename, total, tail))
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CorruptWheel(_zip_error(e)) from e


def _plan(filename: str, total: int, tail: bytes) -> _Plan:
    if len(tail) > total:
        raise ValueError(f"tail of {len(tail)} bytes is longer than the file ({total})")
    buf = _Buffer()
    buf.add(total - len(tail), tail)

    def fetch(start: int, end: int) -> Generator[tuple[int, int], bytes, None]:
        while (gap := buf.gap(start, end)) is not None:
            data = yield gap
            buf.add(gap[0], data)

    # 1. the end records, in one request when the tail is shorter than they are
    yield from fetch(max(0, total - _END_AREA), total)
    # 2. zipfile reads them and the central directory (capped: a hostile end record may
    # claim hundreds of MB; the caller then falls back to the whole file)
    f = _RangeFile(buf, total)
    f.cap = MAX_CENTRAL_DIRECTORY
    while True:
        try:
            zf = zipfile.ZipFile(f)  # type: ignore[arg-type]
            break
        except NeedMoreData as miss:
            yield from fetch(miss.start, miss.end)
        except _TooBig as big:
            raise MetadataError(
                f"the central directory of {filename} claims {big.size:,} bytes, over the "
                f"{MAX_CENTRAL_DIRECTORY:,} byte limit for range reads") from None
    f.cap = None
    info = _metadata_info(zf, filename, remote=True)
    # free zipfile's entries now (100k ZipInfo objects for a big directory: tens of ms), in
    # the worker thread that parses a big directory, not when the plan ends on the event loop
    zf.filelist, zf.NameToInfo = [info], {info.filename: info}
    # 3. the member: guess the local header is as long as the central one, plus some slack
    offset = info.header_offset
    if offset + _LOCAL_SIZE > total:
        raise CorruptWheel(f"the local header of {info.filename} lies beyond the end of the file")
    name = info.orig_filename.encode("utf-8" if info.flag_bits & _FLAG_UTF8 else "cp437",
                                     errors="replace")
    guess = _LOCAL_SIZE + len(name) + len(info.extra) + info.compress_size
    if buf.gap(offset, min(total, offset + guess)) is not None:
        yield from fetch(offset, min(total, offset + guess + LOCAL_HEADER_SLACK))
    # 4. zipfile reads it (checking the local header, sizes and CRC-32); if the local header
    # is longer than guessed, the rest of the member in one more request
    while True:
        try:
            return zf.read(info)
        except NeedMoreData as miss:
            end = miss.end
            if buf.gap(offset, offset + _LOCAL_SIZE) is None:
                nlen, elen = struct.unpack_from("<HH", buf.get(offset, offset + _LOCAL_SIZE), 26)
                end = max(end, min(total, offset + _LOCAL_SIZE + nlen + elen + info.compress_size))
            yield from fetch(miss.start, end)


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_RETRY_ORIGINAL = frozenset({401, 403, 404, 410})


class _Session:
    """The I/O-free bookkeeping of one remote read: headers to send, checks of responses,
    counters, the plan. The reader only moves bytes."""

    def __init__(self, url: str, filename: str, size: int | None, tail: int) -> None:
        if tail < _EOCD_SIZE:
            raise ValueError(f"tail must be at least {_EOCD_SIZE} bytes, not {tail}")
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
        self.plan: _Plan | None = None
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
            raise RangeNotSupported(self.url, filename=self.filename)
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
        m = _CONTENT_RANGE.fullmatch(header)
        if m is None:
            raise self.error(BadRangeResponse, f"bad Content-Range {header!r}")
        start, end = int(m.group(1)), int(m.group(2))
        total = None if m.group(3) == "*" else int(m.group(3))
        if end < start or (total is not None and end >= total):
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
