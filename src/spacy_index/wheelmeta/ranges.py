"""The sans-I/O plan of a remote read: :mod:`zipfile` over the byte ranges fetched so far.

:func:`metadata_plan` is a generator that yields each ``(start, end)`` range it still needs,
is sent its bytes, and returns the METADATA; the file object it hands zipfile raises
:class:`NeedMoreData` for any range not fetched yet, and the plan fetches it and tries again.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Generator
from typing import Any

from spacy_index.errors import CorruptWheel, MetadataError
from spacy_index.wheelmeta.member import MAX_CENTRAL_DIRECTORY, TooBig, metadata_info, zip_error

#: Extra bytes requested after the METADATA member's expected end, so that a local header
#: whose extra field is longer than the central directory's rarely needs another request.
LOCAL_HEADER_SLACK = 1024

_EOCD_SIZE = zipfile.sizeEndCentDir  # 22
_LOCAL_SIZE = zipfile.sizeFileHeader  # 30
#: the end records: the end of central directory, the ZIP64 locator and the ZIP64 record
_END_AREA = _EOCD_SIZE + zipfile.sizeEndCentDir64Locator + zipfile.sizeEndCentDir64
_FLAG_UTF8 = 0x800


class NeedMoreData(Exception):
    """A read of bytes ``[start, end)`` of the remote file that were not fetched yet.

    Not an error a user sees: the plan fetches the bytes and lets zipfile read again.
    (Not an :class:`OSError`, which zipfile would turn into "not a zip file".)
    """

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        super().__init__(f"need bytes {start}-{end - 1}")


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
    ``cap`` bytes raise :class:`TooBig` (``cap = None``: no limit)."""

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
            raise TooBig(end - start if n is None or n < 0 else n)
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
Plan = Generator[tuple[int, int], bytes, bytes]


def metadata_plan(filename: str, total: int, tail: bytes) -> Plan:
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
        raise CorruptWheel(zip_error(e)) from e


def _plan(filename: str, total: int, tail: bytes) -> Plan:
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
        except TooBig as big:
            raise MetadataError(
                f"the central directory of {filename} claims {big.size:,} bytes, over the "
                f"{MAX_CENTRAL_DIRECTORY:,} byte limit for range reads") from None
    f.cap = None
    info = metadata_info(zf, filename, remote=True)
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
