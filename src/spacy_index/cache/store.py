"""The store: :class:`FileCache`, verified files keyed by their sha256, and its flights.

Layout under ``root``: ``files/<sha[:2]>/<sha>`` (only ever a complete, verified file),
``partial/`` (downloads in progress) and ``unverified/<key>`` (the sha256 a file listed with
no hash was stored under). How a flight works: see :mod:`spacy_index.cache`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from spacy_index.cache.download import Download, Flight, Upstream, abandoned, raise_shared
from spacy_index.cache.partial import in_thread, open_partial, partial_path, strerror
from spacy_index.cache.stream import CacheStream
from spacy_index.errors import (
    CacheWriteError,
    DigestMismatch,
    SizeMismatch,
    SpacyIndexError,
    UpstreamFileError,
)
from spacy_index.hashing import check_sha256, file_sha256
from spacy_index.http import redact_url
from spacy_index.model import is_sha256
from spacy_index.singleflight import KeyedLocks, SingleFlight

__all__ = ["FileCache"]


def _quietly(hook: Callable[..., object] | None, *args: Any) -> None:
    """Call a hook; one that fails (a log handler, the index) never fails a download or a read."""
    if hook is not None:
        with contextlib.suppress(Exception):
            hook(*args)


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
        self._flights: dict[str, Flight] = {}
        self._failures: dict[str, tuple[float, BaseException]] = {}
        self._checks: SingleFlight[str, Path | None] = SingleFlight()
        self._verified: dict[str, int] = {}  # sha → size when fully hashed in this process
        #: sha → consumers reading the final file now (never evicted while read, see in_use)
        self._reading: dict[str, int] = {}
        #: called with (upstream, sha256, size) when a file was stored, and (upstream, sha256)
        #: on every hit: the cache index (:mod:`spacy_index.cache.index`) counts and bounds with them
        self.on_stored: Callable[[Upstream, str, int], None] | None = None
        self.on_hit: Callable[[Upstream, str], None] | None = None
        #: called (in a thread) with a verified file's size just before it is stored
        self.make_room: Callable[[int], None] | None = None
        self._lock_for: KeyedLocks[str] = KeyedLocks()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookups ------------------------------------------------------------ #
    def path(self, sha256: str) -> Path:
        """Final location of a file (whether or not it is there)."""
        sha = check_sha256(sha256)
        return self.root / "files" / sha[:2] / sha

    def cached(self, sha256: str) -> Path | None:
        """The final path if the file is present and correct, else None.

        The first call per process hashes the whole file (blocking: async code runs this in a
        thread); a wrong or truncated file is deleted. Later calls only compare the size.
        """
        sha = check_sha256(sha256)
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
                actual = file_sha256(path)
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
        cache, :mod:`spacy_index.cache.s3`) and return its final path. Blocking: async code
        runs this in a thread.

        ``write(path)`` creates the file at ``path`` (a new, private partial file under this
        cache's root). Its bytes are hashed; if they are ``sha256`` the file is moved into
        place and known as verified in this process (later :meth:`cached` calls only compare
        its size). Otherwise :class:`DigestMismatch` is raised; whatever ``write`` raises
        propagates. Either way the partial file is removed. The ``on_stored`` and
        ``make_room`` hooks are not called (they count upstream downloads).
        """
        sha = check_sha256(sha256)
        folder = self.root / "partial"
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{sha}.{os.getpid()}-{secrets.token_hex(4)}.add"
        try:
            write(partial)
            actual = file_sha256(partial)
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
        return await self._checks.run(sha, lambda: in_thread(self.cached, sha))

    def _check_failures(self, sha: str) -> None:
        entry = self._failures.get(sha)
        if entry is not None:
            deadline, exc = entry
            if time.monotonic() < deadline:
                raise_shared(exc)
            del self._failures[sha]

    def _alias_path(self, up: Upstream) -> Path:
        return self.root / "unverified" / up.key

    def _alias(self, up: Upstream) -> str | None:
        """The sha256 an unverified file was stored under, if it was."""
        try:
            sha = self._alias_path(up).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return sha if is_sha256(sha) else None

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
            return partial_path(self.root, check_sha256(sha256)).stat().st_size
        except OSError:
            return 0

    def flights(self) -> int:
        """Downloads from upstream running now (``/metrics``)."""
        return len(self._flights)

    def in_use(self, sha: str) -> bool:
        """Being downloaded or read by this process right now."""
        return sha in self._flights or self._reading.get(sha, 0) > 0

    def _hit(self, up: Upstream, found: Path | Flight) -> Path | Flight:
        if isinstance(found, Path):
            _quietly(self.on_hit, up, found.name)
        return found

    async def _lookup(self, up: Upstream) -> Path | Flight:
        """A verified final path, or the flight that is (now) downloading the file."""
        return self._hit(up, await self._find(up))

    async def _find(self, up: Upstream) -> Path | Flight:
        if up.sha256 is None:
            return await self._lookup_unverified(up)
        sha = check_sha256(up.sha256)
        self._check_failures(sha)
        found: Path | Flight | None = self._flights.get(sha) or self._quick(sha)
        if found is None:
            found = await self._acached(sha)
            # things may have moved while the file was being hashed
            found = found or self._flights.get(sha)
            if found is None:
                self._check_failures(sha)
                found = self._quick(sha) or self._start(up)
        return found

    async def _lookup_unverified(self, up: Upstream) -> Path | Flight:
        key = up.key
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        sha = await in_thread(self._alias, up)
        if sha is not None:
            found = self._quick(sha) or await self._acached(sha)
            if found is not None:
                return found
        return self._flights.get(key) or self._start(up)

    # -- public API --------------------------------------------------------- #
    def open(self, up: Upstream) -> CacheStream:
        """A stream of the file's bytes, from the cache or from the (shared) download."""
        if up.sha256 is not None:
            check_sha256(up.sha256)
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
            raise_shared(found.error)
        assert found.sha is not None
        return self.path(found.sha)

    def cached_now(self, sha256: str) -> Path | None:
        """The final path if it was verified in this process and is still there (no I/O but
        a stat; a file not yet verified in this process answers None)."""
        return self._quick(check_sha256(sha256))

    def prefetch(self, up: Upstream) -> None:
        """Start (or join) the download of ``up`` into the cache, in the background."""
        async def fetch() -> None:
            with contextlib.suppress(SpacyIndexError, OSError):
                await self.ensure(up, wanted=False)

        self._spawn(fetch(), f"prefetch {up.filename}")

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
        _quietly(self._notify, message)

    def _make_room(self) -> None:
        """With ``max_flights`` downloads running, cancel the oldest that no one waits for
        any more (clients that left), so that a new one gets a connection at once."""
        if self.max_flights is None:
            return
        for fl in abandoned(self._flights.values(), self.max_flights):
            fl.dropped = True
            del self._flights[fl.key]  # whoever asks next starts afresh
            fl.task.cancel()  # type: ignore[union-attr]  # abandoned() only picks running ones
            self.dropped += 1
            self._say(f"{fl.up.filename}: abandoned download cancelled for a new one")

    def _start(self, up: Upstream) -> Flight:
        self._make_room()
        try:
            fd, partial, canonical = open_partial(self.root, up.key, self.resume)
        except OSError as exc:
            raise CacheWriteError(self.root, strerror(exc)) from None
        fl = Flight(up, fd, partial)
        fl.keep_partial = self.resume and canonical
        self._flights[fl.key] = fl
        fl.task = self._spawn(self._fly(fl), f"spacy-index download {up.filename}")
        return fl

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task that :meth:`wait_idle` and :meth:`aclose` know of."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _fly(self, fl: Flight) -> None:
        up = fl.up
        try:
            await Download(fl, self.client, chunk_size=self.chunk_size,
                           max_resumes=self.max_resumes, root=self.root, say=self._say).run()
            await self._land(fl)
        except (DigestMismatch, SizeMismatch) as exc:
            fl.error = exc
            fl.keep_partial = False
            self._remember_failure(fl.key, exc)
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
            if self._flights.get(fl.key) is fl:
                del self._flights[fl.key]
            fl.end()

    async def _land(self, fl: Flight) -> None:
        """Move a finished, verified download into place."""
        up, size, actual = fl.up, fl.written, fl.verify()
        final = self.path(actual)
        if self.make_room is not None:  # a bounded cache: evict before the file lands
            with contextlib.suppress(Exception):
                await in_thread(self.make_room, size)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fl.partial, final)
            if up.sha256 is None:
                self._write_alias(up, actual)
        except OSError as exc:
            raise CacheWriteError(self.root, strerror(exc)) from None
        fl.sha = actual
        self._verified[actual] = size
        _quietly(self.on_stored, up, actual, size)
        fl.ok = True
        fl.published = size
        self._say(f"cached {up.filename} ({size} bytes, {fl.upstream_bytes} downloaded)")

    def _remember_failure(self, key: str, exc: BaseException) -> None:
        """Fail requests for ``key`` fast for ``failure_ttl`` (forgetting expired failures)."""
        now = time.monotonic()
        for old in [k for k, (deadline, _) in self._failures.items() if deadline <= now]:
            del self._failures[old]
        self._failures[key] = (now + self.failure_ttl, exc)
