"""The consumer side of the cache: :class:`CacheStream`, one reader of one file.

A consumer of a running download *tails* the partial file: the flight publishes how many bytes
may be read and wakes its consumers; each reads from its own ``dup`` of the file descriptor at
its own offset, one chunk at a time, so memory stays flat whatever the file size and the
number of consumers. The flight holds back its last chunk until the file is verified, so a
stream never ends on a complete but wrong file: it raises the flight's error instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from spacy_index.cache.download import Flight, Upstream, raise_shared
from spacy_index.cache.partial import O_BINARY, in_thread, strerror
from spacy_index.errors import CacheError

if TYPE_CHECKING:
    from spacy_index.cache.store import FileCache

__all__ = ["CacheStream"]


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
        self._flight: Flight | None = None
        self._gen: AsyncIterator[bytes] | None = None
        self._sha: str | None = None
        self._counted: Flight | None = None  #: the flight this stream counts as a consumer of

    async def __aenter__(self) -> CacheStream:
        for _ in range(3):
            found = await self._cache._lookup(self.up)
            if isinstance(found, Flight):
                # no await between the lookup and the dup: the flight cannot have closed it
                try:
                    self._fd = os.dup(found.fd)
                except OSError as exc:  # EMFILE
                    raise CacheError(f"cannot read {self.up.filename!r}: {strerror(exc)}") from None
                self._flight = self._counted = found
                found.consumers += 1
                try:
                    while not (found.started or found.done):
                        await found.changed()
                    if found.error is not None:
                        raise_shared(found.error)
                except BaseException:
                    self._close()
                    raise
                self.size = found.total
                return self
            try:
                self._fd = os.open(found, os.O_RDONLY | O_BINARY)
            except FileNotFoundError:  # evicted in between; look again
                continue
            except OSError as exc:
                raise CacheError(f"cannot read {str(found)!r}: {strerror(exc)}") from None
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
            while data := await in_thread(os.pread, fd, chunk, pos):
                pos += len(data)
                yield data
            return
        while True:
            if fl.error is not None:
                raise_shared(fl.error)
            if pos < fl.published:
                data = await in_thread(os.pread, fd, min(chunk, fl.published - pos), pos)
                if not data:  # cannot happen: published bytes are on disk
                    raise CacheError(f"partial download of {self.up.filename!r} shrank")
                pos += len(data)
                yield data
            elif fl.done:
                return
            else:
                await fl.changed()
