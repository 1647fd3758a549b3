"""Core metadata (PEP 658 / PEP 714) of wheels: the bytes of ``<name>-<version>.dist-info/METADATA``.

Two ways to get them:

* :func:`metadata_from_wheel_file` reads a wheel on disk with :mod:`zipfile`.
* :func:`metadata_from_remote_wheel` (and :func:`metadata_from_remote_wheel_sync`) read a wheel
  on an HTTP server *without downloading it*: one suffix ``Range`` request fetches the tail of
  the file (end of central directory, usually the central directory itself and, for wheels
  whose ``.dist-info`` comes last, the METADATA member too); at most one more request fetches
  a missing part of the central directory and one more the METADATA member. A 450 MB model
  wheel costs one or two requests and about 64 KiB.

The ZIP parsing is pure functions on bytes (:func:`parse_eocd`,
:func:`parse_central_directory`, :func:`find_metadata_entry`, :func:`local_header_length`,
:func:`extract_member`), driven by a small sans-I/O plan (a generator that yields the byte
ranges it still needs) that the async and sync wrappers share.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spacy_index.errors import InvalidFilename, UpstreamError
from spacy_index.http import redact_url
from spacy_index.model import parse_filename

__all__ = [
    "DEFAULT_TAIL",
    "MAX_METADATA_SIZE",
    "BadRangeResponse",
    "CorruptWheel",
    "EndOfCentralDirectory",
    "MetadataError",
    "NeedMoreData",
    "RangeNotSupported",
    "RemoteMetadata",
    "ZipEntry",
    "extract_member",
    "find_metadata_entry",
    "local_header_length",
    "metadata_from_remote_wheel",
    "metadata_from_remote_wheel_sync",
    "metadata_from_wheel_file",
    "parse_central_directory",
    "parse_eocd",
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

_gc_lock = threading.Lock()
_gc_pauses = [0, True]  #: (pauses in progress, whether the collector was on before the first)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a zip directory is parsed: 100k entries
    are 100k short-lived objects, whose allocation triggers full collections (about 90 ms
    each, holding the GIL: a server's event loop stalls); reference counting frees them."""
    with _gc_lock:
        if _gc_pauses[0] == 0:
            _gc_pauses[1] = gc.isenabled()
            gc.disable()
        _gc_pauses[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses[0] -= 1
            if _gc_pauses[0] == 0 and _gc_pauses[1]:
                gc.enable()


def _advance_without_gc(session: _Session, data: bytes) -> tuple[int, int] | None:
    with _gc_paused():
        return session.advance(data)

_EOCD_SIG = b"PK\x05\x06"
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_ZIP64_EOCD_SIZE = 56
_CENTRAL_SIG = b"PK\x01\x02"
_CENTRAL_SIZE = 46
_LOCAL_SIG = b"PK\x03\x04"
_LOCAL_SIZE = 30
_ZIP64_EXTRA_ID = 0x0001
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800
_STORED = 0
_DEFLATED = 8
#: Everything the EOCD search may need: a maximal comment, the EOCD, the ZIP64 locator and record.
_MAX_EOCD_AREA = _MAX_COMMENT + _EOCD_SIZE + _ZIP64_LOCATOR_SIZE + _ZIP64_EOCD_SIZE


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
    """Raised by a pure parser: it needs the file's bytes from ``start`` on (to the data it got).

    Not an error a user sees: the remote readers fetch the bytes and call the parser again.
    """

    def __init__(self, start: int) -> None:
        self.start = start
        super().__init__(f"need the bytes from offset {start}")


# --------------------------------------------------------------------------- #
# Pure ZIP parsing
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class EndOfCentralDirectory:
    """Where the central directory is, from the (ZIP64) end of central directory record.

    Offsets are positions in the file. ``base_offset`` is the length of any data prepended to
    the archive (0 for ordinary wheels): add it to the offsets stored in the archive.
    """

    cd_offset: int
    cd_size: int
    entries: int
    eocd_offset: int
    zip64: bool
    base_offset: int = 0

    @property
    def cd_end(self) -> int:
        return self.cd_offset + self.cd_size


@dataclass(frozen=True)
class ZipEntry:
    """One central directory entry (sizes and offset already taken from ZIP64 extras)."""

    name: str
    raw_name: bytes
    flags: int
    compress_type: int
    crc: int
    compressed_size: int
    file_size: int
    #: offset of the local header, as stored in the archive (add ``base_offset``)
    header_offset: int
    extra: bytes = b""


def parse_eocd(tail: bytes, total: int) -> EndOfCentralDirectory:
    """Find the end of central directory record (and the ZIP64 one) in ``tail``.

    ``tail`` is the last ``len(tail)`` bytes of a file of ``total`` bytes. Raises
    :class:`NeedMoreData` when the records may lie (partly) before ``tail``, and
    :class:`CorruptWheel` when the file is not a ZIP archive.
    """
    if len(tail) > total:
        raise ValueError(f"tail of {len(tail)} bytes is longer than the file ({total})")
    start = total - len(tail)
    pos = _find_eocd(tail) if len(tail) >= _EOCD_SIZE else None
    if pos is None:
        if start > 0 and len(tail) < _MAX_COMMENT + _EOCD_SIZE:
            raise NeedMoreData(max(0, total - _MAX_EOCD_AREA))
        raise CorruptWheel("not a ZIP archive (no end of central directory record)")
    (_sig, disk, cd_disk, _disk_entries, entries, cd_size, cd_offset, _clen) = struct.unpack_from(
        "<4s4H2LH", tail, pos
    )
    eocd_abs = start + pos
    # The ZIP64 locator, when there is one, sits right before the EOCD record.
    loc = pos - _ZIP64_LOCATOR_SIZE
    if loc < 0 and eocd_abs >= _ZIP64_LOCATOR_SIZE:
        raise NeedMoreData(max(0, eocd_abs - _ZIP64_LOCATOR_SIZE - _ZIP64_EOCD_SIZE))
    if loc >= 0 and tail[loc : loc + 4] == _ZIP64_LOCATOR_SIG:
        _s, z64_disk, rec_offset, disks = struct.unpack_from("<4sLQL", tail, loc)
        if z64_disk != 0 or disks > 1:
            raise CorruptWheel("multi-disk ZIP archives are not supported")
        rec = _find_zip64_record(tail, start, rec_offset, start + loc)
        (_s, _rsize, _made, _needed, disk, cd_disk, _de, entries, cd_size, cd_offset) = (
            struct.unpack_from("<4sQ2H2L4Q", tail, rec - start)
        )
        if disk != 0 or cd_disk != 0:
            raise CorruptWheel("multi-disk ZIP archives are not supported")
        cd_end_actual, zip64 = rec, True
    else:
        # (0xFFFF.. values without a ZIP64 locator fail below: the directory would not fit)
        if disk != 0 or cd_disk != 0:
            raise CorruptWheel("multi-disk ZIP archives are not supported")
        cd_end_actual, zip64 = eocd_abs, False
    base = cd_end_actual - (cd_offset + cd_size)
    if base < 0:
        raise CorruptWheel("the central directory does not fit before its end record")
    return EndOfCentralDirectory(
        cd_offset=cd_offset + base,
        cd_size=cd_size,
        entries=entries,
        eocd_offset=eocd_abs,
        zip64=zip64,
        base_offset=base,
    )


def _find_eocd(tail: bytes) -> int | None:
    """Position of the EOCD record: the last one whose comment ends the file exactly, else the
    last one that fits (like :mod:`zipfile`, tolerate a comment length that is too large)."""
    lowest = max(0, len(tail) - _MAX_COMMENT - _EOCD_SIZE)
    fallback = None
    end = len(tail) - _EOCD_SIZE + 4
    while (pos := tail.rfind(_EOCD_SIG, lowest, end)) >= 0:
        (clen,) = struct.unpack_from("<H", tail, pos + 20)
        if pos + _EOCD_SIZE + clen == len(tail):
            return pos
        if fallback is None:
            fallback = pos
        end = pos + 3
    return fallback


def _find_zip64_record(tail: bytes, start: int, rec_offset: int, locator_abs: int) -> int:
    """File position of the ZIP64 end of central directory record."""
    # where the locator says; or right before the locator (the archive was prepended to)
    for cand in (rec_offset, locator_abs - _ZIP64_EOCD_SIZE):
        in_tail = start <= cand and cand + _ZIP64_EOCD_SIZE <= locator_abs
        if in_tail and tail[cand - start : cand - start + 4] == _ZIP64_EOCD_SIG:
            return cand
    needed = min(rec_offset, locator_abs - _ZIP64_EOCD_SIZE)
    if 0 <= needed < start:
        raise NeedMoreData(needed)
    raise CorruptWheel("the ZIP64 end of central directory record is missing")


def parse_central_directory(data: bytes, count: int | None = None) -> list[ZipEntry]:
    """The entries of a central directory (``data`` is exactly the central directory)."""
    entries: list[ZipEntry] = []
    pos = 0
    while pos < len(data):
        if data[pos : pos + 4] != _CENTRAL_SIG or pos + _CENTRAL_SIZE > len(data):
            raise CorruptWheel(f"bad central directory entry at offset {pos} of the directory")
        (
            _sig, _cv, _cs, _ev, _es, flags, method, _time, _date, crc, csize, usize,
            nlen, elen, clen, disk, _iattr, _eattr, offset,
        ) = struct.unpack_from("<4s4B4HL2L5H2L", data, pos)
        name_start = pos + _CENTRAL_SIZE
        extra_start = name_start + nlen
        end = extra_start + elen + clen
        if end > len(data):
            raise CorruptWheel("truncated central directory entry")
        raw_name = bytes(data[name_start:extra_start])
        extra = bytes(data[extra_start : extra_start + elen])
        usize, csize, offset = _apply_zip64_extra(extra, usize, csize, offset, disk)
        name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace")
        entries.append(ZipEntry(name, raw_name, flags, method, crc, csize, usize, offset, extra))
        pos = end
    if count is not None and count != len(entries):
        raise CorruptWheel(f"the central directory has {len(entries)} entries, not {count}")
    return entries


def _apply_zip64_extra(
    extra: bytes, usize: int, csize: int, offset: int, disk: int
) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if tag != _ZIP64_EXTRA_ID:
            continue
        # only the fields whose header value is the 0xFFFF.. sentinel, in this order
        fields = [usize == _U32, csize == _U32, offset == _U32]
        need = sum(fields) * 8 + (4 if disk == _U16 else 0)
        if len(body) < need:
            raise CorruptWheel("truncated ZIP64 extra field")
        values = list(struct.unpack_from(f"<{sum(fields)}Q", body))
        if usize == _U32:
            usize = values.pop(0)
        if csize == _U32:
            csize = values.pop(0)
        if offset == _U32:
            offset = values.pop(0)
        break
    return usize, csize, offset


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


def find_metadata_entry(entries: Sequence[ZipEntry], filename: str) -> ZipEntry:
    """The METADATA entry of the wheel ``filename`` (see :func:`select_metadata_name`)."""
    by_name = {e.name: e for e in entries}  # the last of duplicates wins, as in zipfile
    entry = by_name[select_metadata_name(by_name, filename)]
    if entry.flags & _FLAG_ENCRYPTED:
        raise CorruptWheel(f"{entry.name} is encrypted")
    if entry.compress_type not in (_STORED, _DEFLATED):
        raise MetadataError(
            f"{entry.name} uses unsupported compression method {entry.compress_type}"
        )
    if max(entry.compressed_size, entry.file_size) > MAX_METADATA_SIZE:
        raise CorruptWheel(f"{entry.name} is implausibly large ({entry.file_size} bytes)")
    return entry


def local_header_length(header: bytes) -> int:
    """Length of a local file header (30 bytes + name + extra) from its first 30 bytes."""
    if len(header) < _LOCAL_SIZE or header[:4] != _LOCAL_SIG:
        raise CorruptWheel("bad local file header")
    nlen, elen = struct.unpack_from("<HH", header, 26)
    return _LOCAL_SIZE + nlen + elen


def extract_member(local_bytes: bytes, entry: ZipEntry) -> bytes:
    """The content of ``entry``; ``local_bytes`` starts at its local header and holds at least
    the header and the compressed data. Verifies sizes and the CRC-32 of the central directory."""
    hlen = local_header_length(local_bytes)
    (nlen,) = struct.unpack_from("<H", local_bytes, 26)
    if local_bytes[_LOCAL_SIZE : _LOCAL_SIZE + nlen] != entry.raw_name:
        raise CorruptWheel(f"the local header of {entry.name} names another file")
    data = local_bytes[hlen : hlen + entry.compressed_size]
    if len(data) < entry.compressed_size:
        raise CorruptWheel(f"{entry.name} is truncated")
    if entry.compress_type == _STORED:
        content = bytes(data)
    elif entry.compress_type == _DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            content = inflater.decompress(data, entry.file_size + 1)
            if len(content) <= entry.file_size:
                content += inflater.flush()
        except zlib.error as e:
            raise CorruptWheel(f"{entry.name} does not inflate ({e})") from e
    else:
        raise MetadataError(
            f"{entry.name} uses unsupported compression method {entry.compress_type}"
        )
    if len(content) != entry.file_size:
        raise CorruptWheel(
            f"{entry.name} has {len(content)} bytes, the central directory says {entry.file_size}"
        )
    crc = zlib.crc32(content)
    if crc != entry.crc:
        raise CorruptWheel(
            f"CRC-32 mismatch for {entry.name}: {crc:08x}, expected {entry.crc:08x}"
        )
    return content


# --------------------------------------------------------------------------- #
# Local files
# --------------------------------------------------------------------------- #
def _check_central_directory(path: Path) -> None:
    """Refuse a wheel whose end record claims a central directory over
    ``MAX_CENTRAL_DIRECTORY`` before :mod:`zipfile` reads all of it into memory (a hostile
    upstream's 401 MiB file claiming 400 MiB); anything else is left to zipfile."""
    with open(path, "rb") as f:
        total = f.seek(0, 2)
        f.seek(max(0, total - _MAX_EOCD_AREA))
        tail = f.read()
    try:
        eocd = parse_eocd(tail, total)
    except (NeedMoreData, MetadataError):
        return
    if eocd.cd_size > MAX_CENTRAL_DIRECTORY:
        raise CorruptWheel(f"the central directory claims {eocd.cd_size:,} bytes, over the "
                           f"{MAX_CENTRAL_DIRECTORY:,} byte limit")


def metadata_from_wheel_file(path: Path, filename: str | None = None) -> bytes:
    """Byte-exact content of the wheel's ``<name>-<version>.dist-info/METADATA``.

    ``filename`` is the wheel's filename when ``path`` has another name (a temporary file).
    """
    path = Path(path)
    filename = filename or path.name
    try:
        _check_central_directory(path)
        with _gc_paused(), zipfile.ZipFile(path) as zf:
            member = select_metadata_name(zf.namelist(), filename)
            info = zf.getinfo(member)
            if max(info.compress_size, info.file_size) > MAX_METADATA_SIZE:
                raise CorruptWheel(f"{member} is implausibly large ({info.file_size} bytes)")
            return zf.read(info)
    except MetadataError as e:
        if e.filename and e.source:
            raise
        raise e.with_context(filename=filename, source=str(path)) from e.__cause__
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CorruptWheel(str(e) or type(e).__name__, filename=filename, source=str(path)) from e
    except NotImplementedError as e:
        raise MetadataError(str(e), filename=filename, source=str(path)) from e


# --------------------------------------------------------------------------- #
# Remote files: a sans-I/O plan shared by the async and sync readers
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

    def suffix(self, total: int) -> bytes:
        """The known bytes that end the file."""
        last_start, last = self._segments[-1]
        assert last_start + len(last) == total
        return last


#: A plan yields ``(start, end)`` (half-open) ranges to fetch, is sent their bytes, and
#: returns the METADATA.
_Plan = Generator[tuple[int, int], bytes, bytes]


def _metadata_plan(filename: str, total: int, tail: bytes) -> _Plan:
    buf = _Buffer()
    buf.add(total - len(tail), tail)

    def fetch(start: int, end: int) -> _Plan:
        while (gap := buf.gap(start, end)) is not None:
            data = yield gap
            buf.add(gap[0], data)
        return buf.get(start, end)

    # 1. end of central directory (ZIP64 included)
    while True:
        known = buf.suffix(total)
        try:
            eocd = parse_eocd(known, total)
            break
        except NeedMoreData as more:
            if more.start >= total - len(known):  # pragma: no cover - parse_eocd guarantees
                raise CorruptWheel("inconsistent end of central directory") from None
            yield from fetch(more.start, total - len(known))
    # 2. the central directory (capped: a hostile end record may claim hundreds of MB; the
    # caller then falls back to the whole file); 3. its METADATA entry
    if eocd.cd_size > MAX_CENTRAL_DIRECTORY:
        raise MetadataError(f"the central directory of {filename} claims {eocd.cd_size:,} bytes, "
                            f"over the {MAX_CENTRAL_DIRECTORY:,} byte limit for range reads")
    cd = yield from fetch(eocd.cd_offset, eocd.cd_end)
    entry = find_metadata_entry(parse_central_directory(cd, eocd.entries), filename)
    # 4. the member: guess the local header is as long as the central one, plus some slack
    offset = entry.header_offset + eocd.base_offset
    guess = _LOCAL_SIZE + len(entry.raw_name) + len(entry.extra) + entry.compressed_size
    if offset + _LOCAL_SIZE > total:
        raise CorruptWheel(f"the local header of {entry.name} lies beyond the end of the file")
    if buf.gap(offset, min(total, offset + guess)) is not None:
        yield from fetch(offset, min(total, offset + guess + LOCAL_HEADER_SLACK))
    hlen = local_header_length((yield from fetch(offset, offset + _LOCAL_SIZE)))
    end = offset + hlen + entry.compressed_size
    if end > total:
        raise CorruptWheel(f"{entry.name} extends beyond the end of the file")
    # 5. decompress and check the CRC
    return extract_member((yield from fetch(offset, end)), entry)


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_RETRY_ORIGINAL = frozenset({401, 403, 404, 410})


class _Session:
    """The I/O-free bookkeeping of one remote read: headers to send, checks of responses,
    counters, the plan. The async and sync readers only move bytes."""

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
                self.plan = _metadata_plan(self.filename, self.total, data)
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


def _read(session: _Session, response: httpx.Response, expected: int) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
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


def metadata_from_remote_wheel_sync(
    client: httpx.Client,
    url: str,
    *,
    filename: str,
    size: int | None = None,
    tail: int = DEFAULT_TAIL,
) -> RemoteMetadata:
    """Blocking twin of :func:`metadata_from_remote_wheel` (same requests, same errors)."""
    s = _Session(url, filename, size, tail)
    try:
        first_url, headers = s.first_request()
        with client.stream("GET", first_url, headers=headers, follow_redirects=True) as r:
            s.count(r)
            data = _read(s, r, s.check_first(r))
        while (want := s.advance(data)) is not None:
            for target in s.urls():
                with client.stream(
                    "GET", target, headers=s.range_headers(*want), follow_redirects=True
                ) as r:
                    s.count(r)
                    if s.retry_elsewhere(r, target):
                        continue
                    data = _read(s, r, s.check_followup(r, *want))
                    break
    except MetadataError as e:
        if e.filename and e.source:
            raise
        raise s.contextualize(e) from e.__cause__
    return s.result()
