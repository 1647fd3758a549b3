"""The server's two on-disk stores beside the file cache: the metadata files
(:class:`MetadataStore`) and the cache index with its size bound (:class:`CacheBound`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from spacy_index.cache.index import FILES, CacheIndex
from spacy_index.server.memory import Memory
from spacy_index.singleflight import AsyncKeyedLocks

log = logging.getLogger("spacy_index.server")


class MetadataStore:
    """``root/<wheel sha256>.metadata``, written atomically; remembers metadata sha256s.

    It heals: a file or the whole folder removed while serving is fetched and written again
    (the folder recreated); when the folder cannot be written, the metadata is kept in
    memory instead (one warning), so reading never needs writing.
    """

    def __init__(self, root: Path, memory: Memory | None = None) -> None:
        self.root = root
        with contextlib.suppress(OSError):
            root.mkdir(parents=True, exist_ok=True)
        memory = memory or Memory()
        self._digests: LRUCache[str, str] = memory.lru("metadata_digests")
        #: metadata that could not be written to disk (a read-only or full cache)
        self.in_memory: dict[str, bytes] = {}
        self._warned = False
        self._locks: AsyncKeyedLocks[str] = memory.locks()
        #: bumped whenever a metadata file is stored, so cached pages know to re-render
        self.version = 0
        #: per project (see version_of); bounded like every long-lived map
        self.versions: LRUCache[str, int] = memory.lru("metadata_versions")
        #: ((inode, mtime) of the folder, the wheel sha256s with a metadata file in it)
        self._listing: tuple[tuple[int, int], frozenset[str]] | None = None

    def path(self, wheel_sha: str) -> Path:
        return self.root / f"{wheel_sha}.metadata"

    def listed(self) -> frozenset[str]:
        """The wheel sha256s that have a metadata file in the folder, from one listing that is
        taken again whenever the folder changed since (its mtime: every file written, renamed
        or removed in it changes it), also by another process. While the folder changed less
        than 2 s ago it is listed every time: a change within the filesystem's timestamp
        granularity would not show in the mtime. A page render asks once, then looks up each
        of its wheels here instead of probing the disk for each (a miss was an ``open()``)."""
        try:
            st = os.stat(self.root)
        except OSError:
            self._listing = None
            return frozenset()
        key = (st.st_ino, st.st_mtime_ns)
        listing = self._listing
        if listing is not None and listing[0] == key and time.time_ns() - key[1] > 2_000_000_000:
            return listing[1]
        try:
            with os.scandir(self.root) as entries:
                names = frozenset(e.name[:-9] for e in entries
                                  if e.name.endswith(".metadata") and not e.name.startswith("."))
        except OSError:
            return frozenset()
        self._listing = (key, names)  # one assignment: a render in a worker thread may race
        return names

    def digest(self, wheel_sha: str, listed: frozenset[str] | None = None) -> str | None:
        """The metadata's sha256 if it is at hand (on disk, or in memory), else None.
        ``listed``: a :meth:`listed` taken just before (a render's many lookups): a wheel
        not in it and not in memory has none, one in it is on disk, without asking the disk
        (the metadata route passes none: it checks the file, and heals a removed one)."""
        if listed is not None and wheel_sha not in listed and wheel_sha not in self.in_memory:
            return None
        known = self._digests.get(wheel_sha)
        if known is not None and (wheel_sha in self.in_memory or listed is not None
                                  or self.path(wheel_sha).exists()):
            return known
        try:
            data = self.path(wheel_sha).read_bytes()
        except OSError:
            self._digests.pop(wheel_sha, None)
            data = self.in_memory.get(wheel_sha)
            if data is None:
                return None
        known = self._digests[wheel_sha] = hashlib.sha256(data).hexdigest()
        return known

    def version_of(self, project: str) -> int:
        """Bumped whenever metadata of one of ``project``'s wheels is stored: its pages (and
        only its pages) re-render to advertise the new hash."""
        return self.versions.get(project, 0)

    def put(self, wheel_sha: str, data: bytes, project: str = "") -> None:
        target = self.path(wheel_sha)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, target)
            self.in_memory.pop(wheel_sha, None)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self._warned:
                self._warned = True
                log.warning("cannot write metadata to %s (%s); keeping it in memory",
                            self.root, e.strerror or e)
            self.in_memory[wheel_sha] = data
        self._digests[wheel_sha] = hashlib.sha256(data).hexdigest()
        self.version += 1
        self.versions[project] = self.versions.get(project, 0) + 1

    def lock(self, wheel_sha: str) -> asyncio.Lock:
        return self._locks(wheel_sha)


class CacheBound:
    """The cache index (:mod:`spacy_index.cache.index`) as the server uses it: hits and new
    entries are recorded off the event loop, and when the cache grows past ``max_size`` the
    least recently used entries are evicted (never a pinned project's, never one being read
    or downloaded). Without a usable cache folder it does nothing."""

    def __init__(self, root: Path, max_size: int | None, pin: tuple[str, ...],
                 in_use: Callable[[str], bool]) -> None:
        self.max_size, self.pin, self.in_use = max_size, pin, in_use
        self.evicted = 0
        self._evict_lock = threading.Lock()
        self._reserved = 0
        #: called (kind, bytes) for every eviction: the metrics count them
        self.on_evict: Callable[[str, int], None] | None = None
        try:
            self.index: CacheIndex | None = CacheIndex(root)
        except (OSError, sqlite3.Error) as e:
            log.warning("the cache index in %s is not usable (%s); no hit counts or bound",
                        root, getattr(e, "strerror", None) or e)
            self.index = None
        if self.index is not None and max_size is not None:
            self.index.scan()

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.index is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test calling directly): now
            self._safely(fn, *args)
            return
        # handed to the executor once the current request step yields (a cached file: its
        # sendfile under way), so that the woken worker does not contend for the GIL while
        # the request's answer is being prepared
        loop.call_soon(loop.run_in_executor, None, self._safely, fn, *args)

    @staticmethod
    def _safely(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except (OSError, sqlite3.Error) as e:
            log.warning("cache index: %s", getattr(e, "strerror", None) or e)

    def used(self, kind: str, sha: str, filename: str, project: str) -> None:
        if self.index is not None:
            self._later(self.index.used, kind, sha, filename, project)

    def stored(self, kind: str, sha: str, filename: str, project: str, size: int) -> None:
        if self.index is not None:
            self._later(self._stored, kind, sha, filename, project, size)

    def make_room(self, size: int) -> None:
        """Before a file of ``size`` bytes lands: evict so that it fits under the bound, and
        reserve its size until the index counts it (two downloads finishing together each
        make room for themselves)."""
        if self.index is None or self.max_size is None:
            return
        with self._evict_lock:
            target = max(0, self.max_size - size - self._reserved)
            if self.index.total() > target:
                self._evict(target)
            self._reserved += size

    def _stored(self, kind: str, sha: str, filename: str, project: str, size: int) -> None:
        assert self.index is not None
        self.index.stored(kind, sha, filename, project, size)
        if self.max_size is None:
            return
        with self._evict_lock:  # one at a time, and every new entry is checked after the last
            if kind == FILES:
                self._reserved = max(0, self._reserved - size)
            if self.index.total() + self._reserved > self.max_size:
                self._evict(max(0, self.max_size - self._reserved))

    def _evict(self, target: int) -> None:
        """Evict down to ``target`` bytes (the caller holds the eviction lock)."""
        assert self.index is not None
        for entry in self.index.evict(target, pin=self.pin, in_use=self.in_use):
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(entry.kind, entry.size)
            log.info("evicted %s (%d bytes, last used %s)", entry.filename or entry.sha256,
                     entry.size, time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.last_used)))
