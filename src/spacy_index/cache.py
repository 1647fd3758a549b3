"""The content-addressed file cache behind ``spacy-index serve`` (and ``install``/mirroring).

Files are keyed by their sha256 and live at ``root/files/<sha[:2]>/<sha>``. A file only gets
there after its size and sha256 were checked, so whatever is at a final path is complete and
correct (a file planted or damaged behind our back is caught by :meth:`FileCache.cached`, which
hashes every entry fully once per process).

How a download works (one *flight* per sha256, shared by everyone who asks for it):

* The flight is a detached task. It writes ``root/partial/<sha>.partial`` (``flock``-ed, so a
  second process on the same cache uses a private name instead of clobbering it), hashing
  while it streams, then checks size and sha256 and ``os.replace``-s the file into place.
  Consumers that go away (a client disconnects, a task is cancelled) never stop it, except
  that with ``max_flights`` (serve: the size of the file pool) a new download never waits
  behind downloads nobody waits for any more: the oldest of those are cancelled to make room.
* Consumers *tail* the partial file: the flight publishes how many bytes may be read and wakes
  them; each consumer reads from its own ``dup`` of the file descriptor at its own offset, one
  chunk at a time, so memory stays flat whatever the file size and the number of consumers.
* The flight always holds back the last ``chunk_size`` bytes it wrote; they are published only
  after the size and sha256 checks passed. A consumer can therefore never receive a complete
  file that is wrong: on a mismatch every consumer gets :class:`DigestMismatch` (or
  :class:`SizeMismatch`) instead of the last chunk, nothing is stored, and the failure is
  remembered for ``failure_ttl`` seconds so that retries fail fast without hitting upstream.
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
* ``resume=True`` (``install``, ``build --mirror``; not ``serve``) keeps a download across
  runs: a flight that stops early (Ctrl-C, a lost network) leaves its partial file, and the
  next flight of the same sha256 re-hashes those bytes and asks only for the rest
  (``Range``, no ``If-Range``: the content is named by its hash, and the final check still
  covers every byte). A partial file that fails that check is removed as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from spacy_index.errors import DigestMismatch, SpacyIndexError, UpstreamError
from spacy_index.http import describe_error, redact_url

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CacheError",
    "CacheStream",
    "CacheWriteError",
    "FileCache",
    "InvalidDigest",
    "SizeMismatch",
    "Upstream",
    "UpstreamChanged",
    "UpstreamFileError",
]

_T = TypeVar("_T")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
#: Answers of an expired or revoked signed URL: go back to ``Upstream.url`` for a fresh one.
_REFRESH = frozenset({401, 403, 410})
_O_BINARY = getattr(os, "O_BINARY", 0)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #
class InvalidDigest(SpacyIndexError, ValueError):
    """A cache key is not a sha256 hex digest (checked before any path is built)."""

    def __init__(self, value: object) -> None:
        self.value = value
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        super().__init__(f"not a sha256 digest (64 lower-case hex digits): {shown}")


class CacheError(SpacyIndexError):
    """The download cache itself failed."""


class CacheWriteError(CacheError):
    """The cache could not be written (disk full, permissions); existing entries are intact."""

    def __init__(self, root: Path, detail: str) -> None:
        self.root = root
        self.detail = detail
        super().__init__(
            f"cannot write to the download cache {str(root)!r}: {detail}; "
            "free some space or use another cache directory"
        )


class UpstreamFileError(UpstreamError):
    """A file could not be downloaded (an HTTP error, or the connection kept failing)."""

    def __init__(self, filename: str, status: int | None, url: str, detail: str = "") -> None:
        self.filename = filename
        self.status = status
        self.url = url  # already redacted
        self.detail = detail
        if status is not None:
            msg = f"cannot download {filename!r}: HTTP {status} from {url}"
        else:
            msg = f"cannot download {filename!r} from {url}: {detail}"
        super().__init__(msg)


class SizeMismatch(UpstreamError):
    """Upstream's size for a file is not the size the index promised."""

    def __init__(self, filename: str, expected: int, actual: int, *, at_least: bool = False) -> None:
        self.filename = filename
        self.expected = expected
        self.actual = actual
        got = f"at least {actual}" if at_least else str(actual)
        super().__init__(f"size mismatch for {filename!r}: expected {expected} bytes, upstream has {got}")


class UpstreamChanged(UpstreamError):
    """The upstream file changed while it was being downloaded; a retry starts afresh."""

    def __init__(self, filename: str, detail: str) -> None:
        self.filename = filename
        self.detail = detail
        super().__init__(f"{filename!r} changed upstream during the download ({detail}); retry")


class _Retry(Exception):
    def __init__(self, reason: str, *, full: bool) -> None:
        self.reason = reason
        self.full = full  # retry with a plain GET instead of a range request


class _Refresh(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Complete(Exception):
    """A resumed range starts at the end: the kept partial file already holds every byte."""


# --------------------------------------------------------------------------- #
# Public types
# --------------------------------------------------------------------------- #
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


def _check_sha(sha: object) -> str:
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise InvalidDigest(sha)
    return sha


# --------------------------------------------------------------------------- #
# Blocking helpers (run in worker threads)
# --------------------------------------------------------------------------- #
def _pwrite_all(fd: int, data: Any, pos: int) -> None:
    """Write all of ``data`` at ``pos``. (Module level so tests can inject ENOSPC.)"""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _write_and_hash(fd: int, hasher: Any, buf: bytearray, skip: int, pos: int) -> None:
    data = memoryview(buf)[skip:]
    _pwrite_all(fd, data, pos)
    hasher.update(data)


def _first_difference(fd: int, buf: bytearray, n: int, pos: int) -> int | None:
    """Index of the first of ``buf[:n]`` that differs from the file at ``pos``, or None."""
    disk = os.pread(fd, n, pos)
    new = memoryview(buf)[:n]
    if len(disk) == n and new == disk:
        return None
    for i in range(min(n, len(disk))):
        if new[i] != disk[i]:
            return i
    return min(n, len(disk))


def _hash_file(path: Path, block: int = 1 << 20) -> str:
    hasher = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            hasher.update(view[:n])
    return hasher.hexdigest()


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in the default executor. If we are cancelled meanwhile, wait for the
    worker to finish before re-raising, so no one closes a descriptor it still uses."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        raise


def _strerror(exc: OSError) -> str:
    return exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))


def _describe(exc: BaseException) -> str:
    return _USERINFO.sub("***@", describe_error(exc).splitlines()[0])


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes a-b/total`` → (a, total or None)."""
    m = _CONTENT_RANGE.fullmatch(value or "")
    if m is None or int(m.group(2)) < int(m.group(1)):
        return None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


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
class _Flight:
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


def _raise(exc: BaseException) -> None:
    """Raise an exception that is shared by several consumers (fresh traceback each time)."""
    raise exc.with_traceback(None)


class CacheStream:
    """One consumer of one file: ``async with cache.open(up) as s: async for b in s: ...``.

    After ``__aenter__``: ``hit`` says whether the file was already cached (then ``path`` is
    the final file, which a server can ``sendfile``), ``size`` is the total size if known.
    Upstream errors that are known before the first byte (404, size mismatch, a recent digest
    mismatch) are raised by ``__aenter__``; later ones by the iteration.
    """

    def __init__(self, cache: FileCache, up: Upstream) -> None:
        self._cache = cache
        self.up = up
        self.hit = False
        self.size: int | None = None
        self.path: Path | None = None
        #: the file had no expected sha256: it is served as it arrived (see Upstream.sha256)
        self.unverified = up.sha256 is None
        self._fd: int | None = None
        self._flight: _Flight | None = None
        self._gen: AsyncIterator[bytes] | None = None
        self._sha: str | None = None
        self._counted: _Flight | None = None  #: the flight this stream counts as a consumer of

    async def __aenter__(self) -> CacheStream:
        for _ in range(3):
            found = await self._cache._lookup(self.up)
            if isinstance(found, _Flight):
                # no await between the lookup and the dup: the flight cannot have closed it
                try:
                    self._fd = os.dup(found.fd)
                except OSError as exc:  # EMFILE
                    raise CacheError(f"cannot read {self.up.filename!r}: {_strerror(exc)}") from None
                self._flight = self._counted = found
                found.consumers += 1
                try:
                    while not (found.started or found.done):
                        await found.changed()
                    if found.error is not None:
                        _raise(found.error)
                except BaseException:
                    self._close()
                    raise
                self.size = found.total
                return self
            try:
                self._fd = os.open(found, os.O_RDONLY | _O_BINARY)
            except FileNotFoundError:  # evicted in between; look again
                continue
            except OSError as exc:
                raise CacheError(f"cannot read {str(found)!r}: {_strerror(exc)}") from None
            self.hit, self.path, self.size = True, found, os.fstat(self._fd).st_size
            self._sha = found.name
            self._cache._reading[found.name] = self._cache._reading.get(found.name, 0) + 1
            return self
        raise CacheError(f"cache entry for {self.up.filename!r} keeps disappearing")

    async def __aexit__(self, *exc: object) -> None:
        gen, self._gen = self._gen, None
        try:
            if gen is not None:
                await gen.aclose()  # type: ignore[attr-defined]
        finally:
            self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        counted, self._counted = self._counted, None
        if counted is not None:
            counted.consumers -= 1
        sha, self._sha = self._sha, None
        if sha is not None:
            left = self._cache._reading.get(sha, 1) - 1
            if left > 0:
                self._cache._reading[sha] = left
            else:
                self._cache._reading.pop(sha, None)

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._fd is None:
            raise RuntimeError("iterate a CacheStream inside 'async with'")
        if self._gen is None:  # like a file: iterating again continues where it stopped
            self._gen = self._iterate(self._fd)
        return self._gen

    async def _iterate(self, fd: int) -> AsyncIterator[bytes]:
        chunk = self._cache.chunk_size
        pos = 0
        fl = self._flight
        if fl is None:  # a hit: the whole file
            while data := await _in_thread(os.pread, fd, chunk, pos):
                pos += len(data)
                yield data
            return
        while True:
            if fl.error is not None:
                _raise(fl.error)
            if pos < fl.published:
                data = await _in_thread(os.pread, fd, min(chunk, fl.published - pos), pos)
                if not data:  # cannot happen: published bytes are on disk
                    raise CacheError(f"partial download of {self.up.filename!r} shrank")
                pos += len(data)
                yield data
            elif fl.done:
                return
            else:
                await fl.changed()


# --------------------------------------------------------------------------- #
# The cache
# --------------------------------------------------------------------------- #
class FileCache:
    """Verified, content-addressed files, downloaded once however many ask at the same time.

    ``notify`` receives one-line progress messages (download started, resumed, URL refreshed,
    corrupt entry evicted). ``failure_ttl`` is how long a digest/size mismatch is remembered.
    """

    def __init__(
        self,
        root: Path,
        client: httpx.AsyncClient,
        *,
        chunk_size: int = 1 << 20,
        max_resumes: int = 5,
        notify: Callable[[str], None] | None = None,
        failure_ttl: float = 30.0,
        resume: bool = False,
        max_flights: int | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.root = Path(root)
        self.client = client
        self.chunk_size = chunk_size
        self.max_resumes = max_resumes
        self.failure_ttl = failure_ttl
        #: keep partial files across runs and resume them (see the module docstring)
        self.resume = resume
        #: downloads that may run at once before abandoned ones (no consumer left) are
        #: cancelled for a new one: the client's connection pool size (None: never)
        self.max_flights = max_flights
        #: abandoned downloads cancelled to make room so far
        self.dropped = 0
        self._notify = notify
        self._flights: dict[str, _Flight] = {}
        self._failures: dict[str, tuple[float, BaseException]] = {}
        self._checks: dict[str, asyncio.Future[Path | None]] = {}
        self._verified: dict[str, int] = {}  # sha → size when fully hashed in this process
        #: sha → consumers reading the final file now (never evicted while read, see in_use)
        self._reading: dict[str, int] = {}
        #: called with (upstream, sha256, size) when a file was stored, and (upstream, sha256)
        #: on every hit: the cache index (cache_index.py) counts and bounds with them
        self.on_stored: Callable[[Upstream, str, int], None] | None = None
        self.on_hit: Callable[[Upstream, str], None] | None = None
        #: called (in a thread) with a verified file's size just before it is stored
        self.make_room: Callable[[int], None] | None = None
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookups ------------------------------------------------------------ #
    def path(self, sha256: str) -> Path:
        """Final location of a file (whether or not it is there)."""
        sha = _check_sha(sha256)
        return self.root / "files" / sha[:2] / sha

    def cached(self, sha256: str) -> Path | None:
        """The final path if the file is present and correct, else None.

        The first call per process hashes the whole file (blocking: async code runs this in a
        thread); a wrong or truncated file is deleted. Later calls only compare the size.
        """
        sha = _check_sha(sha256)
        path = self.path(sha)
        with self._lock_for(sha):
            try:
                st = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                self._verified.pop(sha, None)
                return None
            known = self._verified.get(sha)
            if known is not None:
                if st.st_size == known:
                    return path
                reason = f"its size changed from {known} to {st.st_size} bytes"
            else:
                actual = _hash_file(path)
                if actual == sha:
                    self._verified[sha] = st.st_size
                    return path
                reason = f"its sha256 is {actual}"
            self._verified.pop(sha, None)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._say(f"evicted corrupt cache entry {path.name} ({reason})")
            return None

    def add(self, sha256: str, write: Callable[[Path], None], *, filename: str = "") -> Path:
        """Store a file that comes from somewhere other than its upstream (the shared S3
        cache, :mod:`spacy_index.cache_s3`) and return its final path. Blocking: async code
        runs this in a thread.

        ``write(path)`` creates the file at ``path`` (a new, private partial file under this
        cache's root). Its bytes are hashed; if they are ``sha256`` the file is moved into
        place and known as verified in this process (later :meth:`cached` calls only compare
        its size). Otherwise :class:`DigestMismatch` is raised; whatever ``write`` raises
        propagates. Either way the partial file is removed. The ``on_stored`` and
        ``make_room`` hooks are not called (they count upstream downloads).
        """
        sha = _check_sha(sha256)
        folder = self.root / "partial"
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{sha}.{os.getpid()}-{secrets.token_hex(4)}.add"
        try:
            write(partial)
            actual = _hash_file(partial)
            if actual != sha:
                raise DigestMismatch(filename or sha, sha, actual)
            size = partial.stat().st_size
            final = self.path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            with self._lock_for(sha):
                os.replace(partial, final)
                self._verified[sha] = size
            return final
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def _lock_for(self, sha: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(sha, threading.Lock())

    def _quick(self, sha: str) -> Path | None:
        """The final path if it was verified in this process and still has its size."""
        known = self._verified.get(sha)
        if known is None:
            return None
        path = self.path(sha)
        try:
            return path if path.stat().st_size == known else None
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def _acached(self, sha: str) -> Path | None:
        """:meth:`cached` in a thread, one check per sha at a time."""
        fut = self._checks.get(sha)
        if fut is None:
            fut = asyncio.ensure_future(_in_thread(self.cached, sha))
            self._checks[sha] = fut

            def done(f: asyncio.Future[Path | None]) -> None:
                if self._checks.get(sha) is f:
                    del self._checks[sha]
                if not f.cancelled():
                    f.exception()  # retrieved even if every waiter went away

            fut.add_done_callback(done)
        return await asyncio.shield(fut)

    def _check_failures(self, sha: str) -> None:
        entry = self._failures.get(sha)
        if entry is not None:
            deadline, exc = entry
            if time.monotonic() < deadline:
                _raise(exc)
            del self._failures[sha]

    def _alias_path(self, up: Upstream) -> Path:
        return self.root / "unverified" / up.key

    def _alias(self, up: Upstream) -> str | None:
        """The sha256 an unverified file was stored under, if it was."""
        try:
            sha = self._alias_path(up).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return sha if _SHA256.fullmatch(sha) else None

    def _write_alias(self, up: Upstream, sha: str) -> None:
        target = self._alias_path(up)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        tmp.write_text(sha + "\n", "ascii")
        os.replace(tmp, target)

    def received(self, sha256: str) -> int | None:
        """Bytes a running download of this file has written so far (None when none runs)."""
        fl = self._flights.get(sha256)
        return None if fl is None else fl.written

    def partial_size(self, sha256: str) -> int:
        """Bytes of this file kept from an earlier, unfinished download (0 when none)."""
        try:
            return (self.root / "partial" / f"{_check_sha(sha256)}.partial").stat().st_size
        except OSError:
            return 0

    def in_use(self, sha: str) -> bool:
        """Being downloaded or read by this process right now."""
        return sha in self._flights or self._reading.get(sha, 0) > 0

    def _hit(self, up: Upstream, found: Path | _Flight) -> Path | _Flight:
        if isinstance(found, Path) and self.on_hit is not None:
            with contextlib.suppress(Exception):
                self.on_hit(up, found.name)
        return found

    async def _lookup(self, up: Upstream) -> Path | _Flight:
        """A verified final path, or the flight that is (now) downloading the file."""
        return self._hit(up, await self._find(up))

    async def _find(self, up: Upstream) -> Path | _Flight:
        if up.sha256 is None:
            return await self._lookup_unverified(up)
        sha = _check_sha(up.sha256)
        self._check_failures(sha)
        found: Path | _Flight | None = self._flights.get(sha) or self._quick(sha)
        if found is None:
            found = await self._acached(sha)
            # things may have moved while the file was being hashed
            found = found or self._flights.get(sha)
            if found is None:
                self._check_failures(sha)
                found = self._quick(sha) or self._start(up)
        return found

    async def _lookup_unverified(self, up: Upstream) -> Path | _Flight:
        key = up.key
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        sha = await _in_thread(self._alias, up)
        if sha is not None:
            found = self._quick(sha) or await self._acached(sha)
            if found is not None:
                return found
        return self._flights.get(key) or self._start(up)

    # -- public API --------------------------------------------------------- #
    def open(self, up: Upstream) -> CacheStream:
        """A stream of the file's bytes, from the cache or from the (shared) download."""
        if up.sha256 is not None:
            _check_sha(up.sha256)
        return CacheStream(self, up)

    async def ensure(self, up: Upstream, *, wanted: bool = True) -> Path:
        """Download the file if needed (joining a running download) and return its path.
        ``wanted=False`` (a prefetch): the caller does not count as waiting for it."""
        found = await self._lookup(up)
        if isinstance(found, Path):
            return found
        found.consumers += wanted
        try:
            while not found.done:
                await found.changed()
        finally:
            found.consumers -= wanted
        if found.error is not None:
            _raise(found.error)
        assert found.sha is not None
        return self.path(found.sha)

    def cached_now(self, sha256: str) -> Path | None:
        """The final path if it was verified in this process and is still there (no I/O but
        a stat; a file not yet verified in this process answers None)."""
        return self._quick(_check_sha(sha256))

    def prefetch(self, up: Upstream) -> None:
        """Start (or join) the download of ``up`` into the cache, in the background."""
        async def fetch() -> None:
            with contextlib.suppress(SpacyIndexError, OSError):
                await self.ensure(up, wanted=False)

        task = asyncio.get_running_loop().create_task(fetch(), name=f"prefetch {up.filename}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Wait until no download is running (their errors went to their consumers)."""
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Cancel the running downloads and wait for them (their partial files are removed,
        or kept for the next run with ``resume``)."""
        for task in list(self._tasks):
            task.cancel()
        await self.wait_idle()

    # -- downloading -------------------------------------------------------- #
    def _say(self, message: str) -> None:
        if self._notify is not None:
            with contextlib.suppress(Exception):
                self._notify(message)

    def _open_partial(self, sha: str) -> tuple[int, Path, bool]:
        folder = self.root / "partial"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{sha}.partial"
        flags = os.O_RDWR | os.O_CREAT | _O_BINARY
        for _ in range(5):
            fd = os.open(path, flags, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process downloads it: keep out of its way
                os.close(fd)
                path = folder / f"{sha}.{os.getpid()}-{secrets.token_hex(4)}.partial"
                flags |= os.O_EXCL
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else its owner just renamed or removed it; start over
                break
            os.close(fd)
        else:  # pragma: no cover - pathological contention
            raise OSError(errno.EBUSY, "partial file is busy")
        canonical = path.name == f"{sha}.partial"
        if self.resume and canonical:
            return fd, path, True  # an earlier run's bytes, re-hashed by the flight
        try:
            # a stale partial of a crashed run; never a new (empty) file: on ext4 a truncate
            # to 0 makes the last close flush the whole file (190 ms for 400 MiB, on the loop)
            if os.fstat(fd).st_size:
                os.ftruncate(fd, 0)
        except OSError:
            os.close(fd)
            raise
        return fd, path, canonical

    def _make_room(self) -> None:
        """With ``max_flights`` downloads running, cancel the oldest that no one waits for
        any more (clients that left), so that a new one gets a connection at once."""
        if self.max_flights is None:
            return
        running = [fl for fl in self._flights.values() if not fl.done and not fl.dropped]
        excess = len(running) + 1 - self.max_flights
        for fl in running:
            if excess <= 0:
                break
            if fl.consumers <= 0 and fl.task is not None and not fl.task.done():
                fl.dropped = True
                del self._flights[fl.key]  # whoever asks next starts afresh
                fl.task.cancel()
                self.dropped += 1
                excess -= 1
                self._say(f"{fl.up.filename}: abandoned download cancelled for a new one")

    def _start(self, up: Upstream) -> _Flight:
        self._make_room()
        try:
            fd, partial, canonical = self._open_partial(up.key)
        except OSError as exc:
            raise CacheWriteError(self.root, _strerror(exc)) from None
        fl = _Flight(up, fd, partial)
        fl.keep_partial = self.resume and canonical
        self._flights[fl.key] = fl
        fl.task = asyncio.get_running_loop().create_task(
            self._fly(fl), name=f"spacy-index download {up.filename}"
        )
        self._tasks.add(fl.task)
        fl.task.add_done_callback(self._tasks.discard)
        return fl

    async def _fly(self, fl: _Flight) -> None:
        up = fl.up
        sha = fl.key
        try:
            if fl.keep_partial:
                await _in_thread(self._resume_from_disk, fl)
            self._say(f"downloading {up.filename}" + (
                f" (resuming at byte {fl.resumed_from:,})" if fl.resumed_from else ""))
            await self._download(fl)
            size = fl.written
            if up.size is not None and size != up.size:
                raise SizeMismatch(up.filename, up.size, size)
            actual = fl.hasher.hexdigest()
            if up.sha256 is not None and actual != up.sha256:
                raise DigestMismatch(up.filename, up.sha256, actual)
            final = self.path(actual)
            if self.make_room is not None:  # a bounded cache: evict before the file lands
                with contextlib.suppress(Exception):
                    await _in_thread(self.make_room, size)
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(fl.partial, final)
                if up.sha256 is None:
                    self._write_alias(up, actual)
            except OSError as exc:
                raise CacheWriteError(self.root, _strerror(exc)) from None
            fl.sha = actual
            self._verified[actual] = size
            if self.on_stored is not None:
                with contextlib.suppress(Exception):
                    self.on_stored(up, actual, size)
            fl.ok = True
            fl.published = size
            self._say(f"cached {up.filename} ({size} bytes, {fl.upstream_bytes} downloaded)")
        except (DigestMismatch, SizeMismatch) as exc:
            fl.error = exc
            fl.keep_partial = False
            now = time.monotonic()
            for key in [k for k, (deadline, _) in self._failures.items() if deadline <= now]:
                del self._failures[key]
            self._failures[sha] = (now + self.failure_ttl, exc)
        except asyncio.CancelledError:
            fl.error = UpstreamFileError(up.filename, None, redact_url(up.url),
                                         "the download was cancelled")
            raise
        except Exception as exc:
            fl.error = exc
            # kept for the next run only when the bytes are good and just unfinished
            if not isinstance(exc, UpstreamFileError) or exc.status is not None:
                fl.keep_partial = False
        finally:
            if not fl.ok and not (fl.keep_partial and fl.written > 0):
                with contextlib.suppress(OSError):
                    os.unlink(fl.partial)
            if self._flights.get(sha) is fl:
                del self._flights[sha]
            os.close(fl.fd)
            fl.done = True
            fl.wake()

    def _resume_from_disk(self, fl: _Flight) -> None:
        """Take up an earlier run's partial file: hash its bytes, continue after them."""
        size = os.fstat(fl.fd).st_size
        limit = fl.up.size
        if size <= 0 or (limit is not None and size > limit):
            os.ftruncate(fl.fd, 0)
            return
        pos = 0
        while pos < size:
            block = os.pread(fl.fd, min(1 << 20, size - pos), pos)
            if not block:
                break
            fl.hasher.update(block)
            pos += len(block)
        os.ftruncate(fl.fd, pos)
        fl.written = fl.resumed_from = pos
        fl.published = max(0, pos - self.chunk_size)

    def _accept(self, fl: _Flight, resp: httpx.Response, url: str, ranged: bool,
                offset: int) -> int:
        """Check an answer's status and size; returns the offset of its first body byte."""
        up = fl.up
        status = resp.status_code
        total: int | None
        if status == 206:
            want = offset if ranged else 0
            span = _content_range(resp.headers.get("Content-Range"))
            if span is None or span[0] != want:
                raise _Retry(f"a 206 for {resp.headers.get('Content-Range')!r}, "
                             f"not bytes {want}-", full=True)
            start, total = span
        elif status == 200:
            start, total = 0, _content_length(resp)
        elif status in _REFRESH and url != up.url:
            raise _Refresh(status)
        elif status == 416 and ranged:
            span = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", resp.headers.get("Content-Range", ""))
            if span is not None and int(span.group(1)) == offset:
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
            fl.total = total if total is not None else up.size
            fl.started = True
            fl.wake()
        elif fl.total is None:
            fl.total = total
        return start

    async def _download(self, fl: _Flight) -> None:
        up = fl.up
        url = up.url  # where the next request goes: the signed URL once we have one
        validator: str | None = None
        use_range = fl.written > 0  # resuming an earlier run's partial file
        if use_range and up.size is not None and fl.written >= up.size:
            fl.total, fl.started = up.size, True
            fl.wake()
            return
        attempts = 0
        while True:
            offset = fl.written
            ranged = use_range and offset > 0
            headers = {"Accept-Encoding": "identity"}
            if ranged:
                headers["Range"] = f"bytes={offset}-"
                if validator:
                    headers["If-Range"] = validator
            buf = bytearray()
            pos = compare_upto = 0
            problem: str | None = None
            full = False
            try:
                async with self.client.stream("GET", url, headers=headers,
                                              follow_redirects=True) as resp:
                    start = self._accept(fl, resp, url, ranged, offset)
                    if start == 0:
                        validator = _validator(resp)
                    url = str(resp.url)
                    pos = start
                    # a full body after we already have bytes: compare, don't rewrite
                    compare_upto = offset if start < offset else 0
                    async for piece in resp.aiter_raw():
                        fl.upstream_bytes += len(piece)
                        buf += piece
                        if len(buf) >= self.chunk_size:
                            pos = await self._store(fl, buf, pos, compare_upto)
                            buf = bytearray()
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
                raise UpstreamFileError(up.filename, None, redact_url(up.url),
                                        _describe(exc)) from None
            except httpx.TransportError as exc:
                problem = _describe(exc)
            except _Retry as exc:
                problem, full = exc.reason, exc.full
            except _Refresh as exc:
                self._say(f"{up.filename}: the signed URL answered {exc.status}; "
                          "getting a fresh one")
                url = up.url
                use_range = True
                continue
            except _Complete:
                if not fl.started:
                    fl.total = fl.written
                    fl.started = True
                    fl.wake()
                return
            except httpx.HTTPError as exc:
                raise UpstreamFileError(up.filename, None, redact_url(up.url),
                                        _describe(exc)) from None
            progressed = bool(buf)
            if buf:  # what arrived before the connection broke is good: keep it
                pos = await self._store(fl, buf, pos, compare_upto)
            if problem is None:
                if pos < compare_upto:
                    raise UpstreamChanged(up.filename, "a new answer is shorter than the first")
                if fl.total is None or fl.written >= fl.total:
                    return
                problem = f"the body ended at byte {fl.written} of {fl.total}"
            attempts += 1
            if attempts > self.max_resumes:
                raise UpstreamFileError(up.filename, None, redact_url(up.url),
                                        f"gave up after {attempts} attempts ({problem})")
            use_range = not full
            self._say(f"{up.filename}: {problem}; retrying from byte "
                      f"{fl.written if use_range else 0} ({attempts}/{self.max_resumes})")
            if not progressed:
                await asyncio.sleep(min(0.25 * 2 ** (attempts - 1), 5.0))

    async def _store(self, fl: _Flight, buf: bytearray, pos: int, compare_upto: int) -> int:
        """Put ``buf`` (body bytes for offset ``pos``) in the partial file; returns the new
        offset. Bytes below ``compare_upto`` are already there and are only compared."""
        up = fl.up
        end = pos + len(buf)
        limit = up.size if up.size is not None else fl.total
        if limit is not None and end > limit:
            raise SizeMismatch(up.filename, limit, end, at_least=True)
        skip = 0
        if pos < compare_upto:
            skip = min(len(buf), compare_upto - pos)
            diff = await _in_thread(_first_difference, fl.fd, buf, skip, pos)
            if diff is not None:
                raise UpstreamChanged(up.filename, f"it differs from before at byte {pos + diff}")
        if skip < len(buf):
            try:
                await _in_thread(_write_and_hash, fl.fd, fl.hasher, buf, skip, pos + skip)
            except OSError as exc:
                raise CacheWriteError(self.root, _strerror(exc)) from None
            fl.written = end
            fl.published = max(fl.published, end - self.chunk_size)
            fl.wake()
        return end
