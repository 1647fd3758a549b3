"""The Starlette application behind ``spacy-index serve``.

Routes:

- ``/simple/`` and ``/simple/<project>/``: PEP 503 HTML or PEP 691 JSON by ``Accept``
  (q-values; 406 when nothing fits; ``Vary: Accept``), 301 to the normalized name, ETag/304,
  a short ``max-age``. Links point at ``/files/...``; every file carries its sha256, and
  wheels ``data-core-metadata``/``data-dist-info-metadata`` (JSON: ``core-metadata`` only).
- ``/pypi/<project>/json``, ``/simple/pypi/<project>/json``, ``/<project>/json``: the
  PyPI-style document pip-tools reads hashes from.
- ``/files/<filename>``: the file, from the content-addressed cache (one upstream download,
  ever; verified while streaming), with HEAD and single/suffix Range.
- ``/files/<filename>.metadata``: PEP 658 metadata, fetched by Range reads of the remote
  wheel when the wheel is not cached.
- ``/health``.

Each project name is answered by exactly one source, chosen by the config's globs; nothing
is ever merged across sources, whatever the spelling of the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import httpx
from cachetools import LRUCache
from packaging.utils import InvalidName, NormalizedName, canonicalize_name
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spacy_index.cache import CacheWriteError, FileCache, Upstream
from spacy_index.cache_index import FILES, METADATA, CacheIndex
from spacy_index.catalog import Catalog
from spacy_index.errors import DigestMismatch, InvalidFilename, MetadataError, SpacyIndexError
from spacy_index.gcpause import without_gc
from spacy_index.http import describe_error, redact_url
from spacy_index.model import Distribution, Project, parse_filename
from spacy_index.render import html, pep691
from spacy_index.render.json_api import dumps, dumps_value, pypi_project_document
from spacy_index.render.pep691 import JSON_CONTENT_TYPE
from spacy_index.server.auth import Authenticator, AuthMiddleware
from spacy_index.server.catalogue import catalogue_routes
from spacy_index.server.config import ServeConfig, SourceConfig
from spacy_index.server.metrics import Metrics, observability_routes
from spacy_index.server.negotiate import negotiate
from spacy_index.server.protocol import ZEROCOPY
from spacy_index.server.sources import (
    FILE_POOL,
    CatalogSource,
    FolderSource,
    IndexSource,
    Source,
    in_batches,
    read_capped,
)
from spacy_index.server.stats import CacheStats, CountCache
from spacy_index.wheelmeta import metadata_from_remote_wheel, metadata_from_wheel_file

_T = TypeVar("_T")
log = logging.getLogger("spacy_index.server")
access = logging.getLogger("spacy_index.access")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
PAGE_MAX_AGE = 60
FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
CHUNK = 1 << 20
METADATA_TAIL = 16384


@dataclass(frozen=True)
class Located:
    source: Source
    dist: Distribution


class MetadataStore:
    """``root/<wheel sha256>.metadata``, written atomically; remembers metadata sha256s.

    It heals: a file or the whole folder removed while serving is fetched and written again
    (the folder recreated); when the folder cannot be written, the metadata is kept in
    memory instead (one warning), so reading never needs writing.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        with contextlib.suppress(OSError):
            root.mkdir(parents=True, exist_ok=True)
        self._digests: LRUCache[str, str] = LRUCache(maxsize=200_000)
        #: metadata that could not be written to disk (a read-only or full cache)
        self.in_memory: dict[str, bytes] = {}
        self._warned = False
        self._locks: LRUCache[str, asyncio.Lock] = LRUCache(maxsize=10_000)
        #: bumped whenever a metadata file is stored, so cached pages know to re-render
        self.version = 0
        #: per project (see version_of); bounded like every long-lived map
        self.versions: LRUCache[str, int] = LRUCache(maxsize=100_000)
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
        return self._locks.setdefault(wheel_sha, asyncio.Lock())


@dataclass(frozen=True)
class PageParts:
    """Where a rendered project page has each file, so that a re-render of the same project
    (after metadata arrived for one of its wheels) encodes only the files whose advertised
    metadata hash changed and copies the rest from the last body: a page of 15,000 files
    (pydantic-core, 5 MB of JSON) re-renders in milliseconds, not half a second."""

    #: per file, in order: the metadata sha256 the page advertises (None: ``true`` or none)
    metas: tuple[str | None, ...]
    #: per file: start and end of its fragment in the body (2 numbers per file)
    spans: array


#: a rendered page: (project, metadata version, body, etag, the raw headers of the 200 answer
#: without content-length, where the files are in the body (project pages only))
PageEntry = tuple[Project, int, bytes, str, list[tuple[bytes, bytes]], "PageParts | None"]


class CacheBound:
    """The cache index (:mod:`spacy_index.cache_index`) as the server uses it: hits and new
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


class Server:
    """State shared by the routes: routing, sources, caches. Built by :func:`create_app`."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        cache_dir: Path,
        source_factory: Callable[[SourceConfig], Source],
        upstream: IndexSource,
        s3_cache: str | None = None,
        s3_endpoint_url: str | None = None,
        s3_lock_ttl: float = 120.0,
    ) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self.sources: dict[str, Source] = {s.name: source_factory(s) for s in config.sources}
        self.upstream = upstream
        self.metadata = MetadataStore(cache_dir / "metadata")
        self._caches: dict[str, FileCache] = {}
        self._s3_stores: dict[str, Any] = {}
        self.s3_location = None
        self.s3_endpoint_url = s3_endpoint_url
        self.s3_lock_ttl = s3_lock_ttl
        if s3_cache:
            from spacy_index.s3 import parse_s3_url

            self.s3_location = parse_s3_url(s3_cache)
        self._routes: dict[str, Source] = {}
        # every long-lived map is bounded (LRU), whatever sequence of names clients ask for
        self.located: LRUCache[str, Located] = LRUCache(maxsize=400_000)
        self._indexed: LRUCache[str, Project] = LRUCache(maxsize=20_000)
        #: rendered pages: (name, content type) -> (project, metadata version, body, etag,
        #: the raw headers of the 200 answer without content-length)
        #: bounded by bytes: the sum of the rendered bodies stays under 256 MiB
        self.pages: LRUCache[tuple[str, str], PageEntry] = LRUCache(
            maxsize=256 << 20, getsizeof=_entry_size)
        #: set by create_app: writes the access-log line of a request answered by fast_response
        self.log_fast: Callable[[dict[str, Any], int, int], None] | None = None
        #: file/metadata cache hits and misses since start (the catalogue page shows them)
        self.cache_stats = CacheStats()
        #: Prometheus metrics (server/metrics.py): its own registry; every source's client metered
        self.metrics = Metrics(self)
        for source in (*self.sources.values(), self.upstream):
            self.metrics.instrument(source)
        #: client authentication ([auth], server/auth.py); None when off
        self.auth = Authenticator(config.auth, metrics=self.metrics) if config.auth.enabled else None
        self.auth_enabled = self.auth is not None
        #: the cache index: hit counts, last use, and the [cache] max_size bound (LRU)
        self.bound = CacheBound(cache_dir, config.cache.max_size, config.cache.pin, self.in_use)
        self.bound.on_evict = self.metrics.count_eviction

    def source_for(self, name: NormalizedName) -> Source:
        source = self._routes.get(name)
        if source is None:
            cfg = self.config.route(name)
            source = self.sources[cfg.name] if cfg else self.upstream
            if len(self._routes) < 100_000:  # the config never changes while serving
                self._routes[name] = source
        return source

    def cache_for(self, source: Source) -> FileCache:
        cache = self._caches.get(source.name)
        if cache is None:
            client = getattr(source, "files_client", source.client)  # its own pool, if any
            # downloads nobody waits for any more make room for new ones (see FileCache)
            cache = self._caches[source.name] = FileCache(
                self.cache_dir, client, max_flights=FILE_POOL.max_connections)
            cache.on_stored = lambda up, sha, size: self.bound.stored(
                FILES, sha, up.filename, self._project_of(up.filename), size)
            cache.on_hit = lambda up, sha: self.bound.used(FILES, sha, up.filename,
                                                          self._project_of(up.filename))
            cache.make_room = self.bound.make_room
        return cache

    def _project_of(self, filename: str) -> str:
        found = self.located.get(filename)
        return found.dist.project if found is not None else ""

    def in_use(self, sha: str) -> bool:
        return any(cache.in_use(sha) for cache in self._caches.values())

    def s3_store_for(self, source: Source) -> Any:
        """The shared-bucket cache layer for ``source`` (only with ``--cache s3://``)."""
        from spacy_index.cache_s3 import S3FileStore

        store = self._s3_stores.get(source.name)
        if store is None:
            store = self._s3_stores[source.name] = S3FileStore(
                self.cache_for(source), self.s3_location, endpoint_url=self.s3_endpoint_url,
                lock_ttl=self.s3_lock_ttl,
            )
        return store

    async def project(self, name: NormalizedName) -> tuple[Source, Project | None]:
        source = self.source_for(name)
        project = await source.project(name)
        if project is not None and self._indexed.get(name) is not project:
            async for d in in_batches(project.files):  # the loop runs between batches
                self.located[d.filename] = Located(source, d)
            self._indexed[name] = project
        return source, project

    def rendered(self, project: Project, ctype: str) -> tuple[bytes, str] | None:
        """The cached page body and ETag, if still current (no work)."""
        cached = self.pages.get((project.name, ctype))
        if cached and cached[0] is project and cached[1] == self.metadata.version_of(project.name):
            return cached[2], cached[3]
        return None

    async def render_async(self, project: Project, ctype: str) -> tuple[bytes, str]:
        """:meth:`render`, in a worker thread for big projects (the loop only answers)."""
        found = self.rendered(project, ctype)
        if found is not None:
            return found
        if len(project.files) <= 1000:
            return self.render(project, ctype)
        # the work in a thread; the (not thread-safe) page map is read and written on the loop
        version = self.metadata.version_of(project.name)
        previous = self.pages.get((project.name, ctype))
        entry = await asyncio.to_thread(without_gc, self._render_entry, project, ctype,
                                        version, previous)
        self.pages[(project.name, ctype)] = entry
        return entry[2], entry[3]

    def pypi_json(self, project: Project, base: str) -> tuple[bytes, str] | None:
        """The PyPI-style JSON for ``base`` (the server's own URL), rendered once per change;
        one entry per project (for the last base seen), so Host headers cannot grow the map."""
        cached = self.pages.get((project.name, "pypi-json"))
        if cached and cached[0] is project and cached[4] == [(b"base", base.encode())]:
            return cached[2], cached[3]
        return None

    @staticmethod
    def pypi_json_entry(project: Project, base: str) -> PageEntry:
        """Render the PyPI-style JSON (pure: safe in a worker thread)."""
        doc = pypi_project_document(project, lambda d: f"{base}/files/{quote(d.filename)}")
        body = dumps(doc).encode()
        return (project, 0, body, _etag(body), [(b"base", base.encode())], None)

    def render(self, project: Project, ctype: str) -> tuple[bytes, str]:
        """The page body and its ETag, re-rendered only when the project or metadata changed."""
        found = self.rendered(project, ctype)
        if found is not None:
            return found
        key = (project.name, ctype)
        entry = self._render_entry(project, ctype, self.metadata.version_of(project.name),
                                   self.pages.get(key))
        self.pages[key] = entry
        return entry[2], entry[3]

    def _render_entry(self, project: Project, ctype: str, version: int,
                      previous: PageEntry | None = None) -> PageEntry:
        """Render one page (no shared state is written: safe in a worker thread): the bytes
        of ``pep691.project_dict(self.local_view(project))`` as JSON or HTML, file by file.
        With ``previous`` (the last render of this page) of the same project object, a file
        whose advertised metadata did not change is copied from its body, not encoded again.
        """
        metas = self._advertised_metadata(project)
        old = previous[5] if previous is not None and previous[0] is project else None
        if old is not None and len(old.metas) != len(metas):
            old = None
        shell = pep691.project_shell(project)
        if ctype == JSON_CONTENT_TYPE:
            text = dumps(shell)  # '{"files":[],"meta":...}\n' (sorted keys: "files" first)
            assert text.startswith('{"files":[]')
            head, tail, sep = text[:10].encode(), text[10:].encode(), b","
        else:
            head_s, tail_s = html.project_page_shell(shell, project.display_name)
            head, tail, sep = head_s.encode(), tail_s.encode(), b""
        last = memoryview(previous[2]) if old is not None else None
        parts: list[bytes | memoryview] = [head]
        spans = array("Q")
        at = len(head)
        for i, (d, meta) in enumerate(zip(project.files, metas, strict=True)):
            if i and sep:
                parts.append(sep)
                at += len(sep)
            if last is not None and old is not None and old.metas[i] == meta:
                fragment: bytes | memoryview = last[old.spans[2 * i]:old.spans[2 * i + 1]]
            else:
                entry = self._local_file_dict(d, meta)
                fragment = (dumps_value(entry) if ctype == JSON_CONTENT_TYPE
                            else html.file_anchor(entry)).encode()
            parts.append(fragment)
            spans.append(at)
            at += len(fragment)
            spans.append(at)
        parts.append(tail)
        body = b"".join(parts)
        etag = _etag(body)
        headers = [(k, v) for k, v in _page(None, body, ctype, etag=etag).raw_headers
                   if k != b"content-length"]
        return (project, version, body, etag, headers, PageParts(tuple(metas), spans))

    def _advertised_metadata(self, project: Project) -> list[str | None]:
        """Per file: the metadata sha256 its page line advertises (:meth:`local_view`)."""
        listed = self.metadata.listed()
        digest = self.metadata.digest
        out: list[str | None] = []
        upstream: dict[str, Any] = {}
        upstream_of: dict[str, dict[str, Any]] = {}
        for d in project.files:
            meta_sha = digest(d.sha256, listed) if d.sha256 and d.kind == "wheel" else None
            if meta_sha is None:
                upstream = upstream_of.get(d.project)  # type: ignore[assignment]
                if upstream is None:
                    upstream = upstream_of[d.project] = getattr(
                        self.source_for(d.project), "upstream_files", {})
                upstream_meta = upstream.get(d.filename)
                if upstream_meta is not None:
                    meta_sha = upstream_meta.metadata_sha256
            out.append(meta_sha)
        return out

    @staticmethod
    def _local_file_dict(d: Distribution, meta_sha: str | None) -> dict[str, Any]:
        """``pep691.file_dict`` of the file as :meth:`local_view` shows it."""
        entry = pep691.file_dict(d, _local_url)
        entry.pop("core-metadata", None)
        if meta_sha:
            entry["core-metadata"] = {"sha256": meta_sha}
        elif d.kind == "wheel" and d.sha256 is not None:
            entry["core-metadata"] = True
        return entry

    def fast_response(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Answer ``GET /simple/<project>/`` from an already-rendered page, without I/O.

        Called by the server protocol before any task is made (see ``protocol.py``). Returns
        None, and the request takes the normal route, unless the page is rendered and still
        current: the routed source's data is fresh, it is the project object the page was
        rendered from, and no metadata arrived since. The answer is the same bytes and headers
        the route would send (``_page``). Never with client authentication on: every request
        then goes through the app's auth middleware.
        """
        if self.auth_enabled:
            return None
        path = scope["path"]
        if not path.startswith("/simple/") or not path.endswith("/") or scope["query_string"]:
            return None
        name = path[8:-1]
        accept = if_none_match = None
        for key, value in scope["headers"]:
            if key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"if-none-match":
                if_none_match = value.decode("latin-1")
        ctype = negotiate(accept)
        cached = self.pages.get((name, ctype)) if ctype else None  # type: ignore[arg-type]
        if cached is None or cached[1] != self.metadata.version_of(cached[0].name):
            return None
        project, _version, body, etag, headers, _parts = cached
        if self._indexed.get(project.name) is not project or project.name != name:
            return None
        if self.source_for(project.name).peek(project.name) is not project:
            return None
        status = 200
        if if_none_match is not None and _not_modified(if_none_match, etag):
            response = _page(if_none_match, body, ctype, etag=etag)  # type: ignore[arg-type]
            status, headers, body = 304, response.raw_headers, b""
        if self.log_fast is not None:
            self.log_fast(scope, status, len(body))
        return status, headers, body

    async def locate(self, filename: str) -> Located | None:
        found = self.located.get(filename)
        if found is not None:
            return found
        try:
            name = parse_filename(filename).name
        except InvalidFilename:
            # a legacy file (``.egg``, ``.exe``, a non-PEP 440 version): its name ends at the
            # first dash, as setuptools wrote them
            name = _valid_name(filename.split("-", 1)[0]) if "-" in filename else None
            if name is None:
                return None
        await self.project(name)
        return self.located.get(filename)

    def local_view(self, project: Project) -> Project:
        """Links to ``../../files/<filename>``; metadata advertised for hashed wheels."""
        files = (replace(d, url=_local_url(d), core_metadata_sha256=meta_sha,
                         has_core_metadata=d.kind == "wheel" and d.sha256 is not None)
                 for d, meta_sha in zip(project.files, self._advertised_metadata(project),
                                        strict=True))
        return replace(project, files=tuple(files))

    async def aclose(self) -> None:
        for cache in self._caches.values():
            await cache.aclose()
        for source in (*self.sources.values(), self.upstream):
            await source.aclose()


def _local_url(d: Distribution) -> str:
    return f"../../files/{quote(d.filename)}"


def _entry_size(entry: PageEntry) -> int:
    parts = entry[5]
    return len(entry[2]) + 512 + (0 if parts is None else 24 * len(parts.metas))


# --------------------------------------------------------------------------- responses
def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _not_modified(request: Request | str | None, etag: str) -> bool:
    header = (request.headers.get("if-none-match") if isinstance(request, Request) else request) or ""
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(",")) or header.strip() == "*"


def _page(request: Request | str | None, body: bytes, media_type: str, *, vary: bool = True,
          etag: str | None = None) -> Response:
    """A page answer; ``request`` may also be just its If-None-Match header."""
    etag = etag or _etag(body)
    headers = {"ETag": etag, "Cache-Control": f"max-age={PAGE_MAX_AGE}"}
    if vary:
        headers["Vary"] = "Accept"
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>()]+", re.IGNORECASE)
_PATH_IN_TEXT = re.compile(r"(?<![\w.:/-])/(?:[^\s'\"/<>]+/)+[^\s'\"/<>]*")


def public_message(message: str) -> str:
    """An error for clients: what failed, without upstream URLs (a private index's address,
    a signed link) or the server's own paths (the full text goes to the log)."""
    return _PATH_IN_TEXT.sub("<path>", _URL_IN_TEXT.sub("<upstream>", message))


def _error(status: int, message: str) -> PlainTextResponse:
    if status >= 500:
        message = public_message(message)
    return PlainTextResponse(message + "\n", status_code=status, headers={
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def _valid_name(raw: str) -> NormalizedName | None:
    """The normalized name, or None when ``raw`` is not a valid project name at all."""
    try:
        return canonicalize_name(raw, validate=True)
    except InvalidName:
        return None


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range → (start, end inclusive); None = whole file; "416" = unsatisfiable."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    first, _, last = spec.partition("-")
    if not (first.isascii() and last.isascii()) or not (first.isdigit() or first == "") \
            or not (last.isdigit() or last == "") or (first == last == ""):
        return None  # invalid syntax (``1_0``, ``+10``, ``٣``) is ignored: the whole file
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "416"
            return (max(0, size - n), size - 1)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "416"
    return (start, min(end, size - 1))


class FileSpanResponse(Response):
    """``length`` bytes of ``path`` from ``start``: with the ASGI zero-copy extension when the
    server offers it (``sendfile(2)``, see ``protocol.py``), else in 1 MiB reads off the loop."""

    def __init__(self, path: Path, start: int, length: int, *, status_code: int,
                 headers: dict[str, str], media_type: str) -> None:
        super().__init__(None, status_code=status_code, headers=headers, media_type=media_type)
        self.path, self.start, self.length = path, start, length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ZEROCOPY not in scope.get("extensions", {}):
            stream = StreamingResponse(_file_body(self.path, self.start, self.length),
                                       status_code=self.status_code)
            stream.raw_headers = self.raw_headers
            await stream(scope, receive, send)
            return
        with open(self.path, "rb") as f:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            await send({"type": ZEROCOPY, "file": f, "offset": self.start, "count": self.length,
                        "more_body": False})


async def _file_body(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        pos, end = start, start + length
        while pos < end:
            chunk = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK, end - pos), pos)
            if not chunk:
                break
            pos += len(chunk)
            yield chunk
    finally:
        os.close(fd)


def file_response(request: Request, path: Path, etag: str, *, media_type: str) -> Response:
    size = path.stat().st_size
    headers = {"ETag": etag, "Cache-Control": FILE_CACHE_CONTROL, "Accept-Ranges": "bytes"}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    wanted = _parse_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if wanted is not None and if_range is not None and if_range != etag:
        wanted = None
    if wanted == "416":
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = (0, size - 1) if wanted is None else wanted  # type: ignore[misc]
    length = end - start + 1 if size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    return FileSpanResponse(path, start, length, status_code=status, headers=headers,
                            media_type=media_type)


def _bytes_response(request: Request, data: bytes, etag: str, *, media_type: str) -> Response:
    headers = {"ETag": etag, "Cache-Control": FILE_CACHE_CONTROL}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(data))
        return Response(status_code=200, headers=headers, media_type=media_type)
    return Response(data, headers=headers, media_type=media_type)


def _media_type(filename: str) -> str:
    return "application/zip" if filename.endswith((".whl", ".zip")) else "application/gzip"


# --------------------------------------------------------------------------- routes
def create_app(server: Server, *, metrics: bool = True) -> Starlette:
    """The ASGI app of ``server``. ``metrics=False``: nothing is counted and there is no
    ``/metrics`` (the metrics benchmark's baseline)."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "sources": sorted(server.sources)})

    async def root(request: Request) -> Response:
        ctype = negotiate(request.headers.get("accept"))
        if ctype is None:
            return _error(406, "not acceptable: this index serves PEP 691 JSON and PEP 503 HTML")
        names: list[str] = []
        for source in server.sources.values():
            with contextlib.suppress(SpacyIndexError):
                names.extend(await source.project_names())
        unique = {canonicalize_name(n): n for n in sorted(names)}
        doc = {"meta": {"api-version": "1.1"},
               "projects": [{"name": unique[k]} for k in sorted(unique)]}
        body = dumps(doc).encode() if ctype == JSON_CONTENT_TYPE else html.root_page(doc).encode()
        return _page(request, body, ctype)

    async def lookup(request: Request, name: NormalizedName) -> Project | Response:
        """The routed source's project, or the error response to send instead. A client
        that leaves while the upstream is asked stops waiting (499, never sent): the fetch
        is cancelled when nobody else waits for it (IndexSource.project)."""
        try:
            got = await _unless_gone(request, server.project(name))
        except SpacyIndexError as e:
            return _error(502, str(e))
        if got is None:
            return Response(status_code=499)
        _source, project = got[0]
        if project is None:
            return _error(404, f"no project named {name!r}")
        return project

    async def project_page(request: Request) -> Response:
        raw = request.path_params["project"]
        valid = _valid_name(raw)
        if valid is None:
            return _error(404, "not a valid project name")
        name = valid
        if raw != name or not request.url.path.endswith("/"):
            return RedirectResponse(f"{request.scope.get('root_path', '')}/simple/{name}/", status_code=301)
        ctype = negotiate(request.headers.get("accept"))
        if ctype is None:
            return _error(406, "not acceptable: this index serves PEP 691 JSON and PEP 503 HTML")
        project = await lookup(request, name)
        if isinstance(project, Response):
            return project
        body, etag = await server.render_async(project, ctype)
        return _page(request, body, ctype, etag=etag)

    async def pypi_json(request: Request) -> Response:
        name = _valid_name(request.path_params["project"])
        if name is None:
            return _error(404, "not a valid project name")
        project = await lookup(request, name)
        if isinstance(project, Response):
            return project
        base = server.config.public_url or str(request.base_url).rstrip("/")
        found = server.pypi_json(project, base)
        if found is None:
            if len(project.files) > 1000:
                entry = await asyncio.to_thread(without_gc, server.pypi_json_entry, project, base)
            else:
                entry = server.pypi_json_entry(project, base)
            server.pages[(project.name, "pypi-json")] = entry
            found = entry[2], entry[3]
        body, etag = found
        return _page(request, body, "application/json", vary=False, etag=etag)

    async def files(request: Request) -> Response:
        try:
            return await cached_file(request)
        except FileNotFoundError:
            # evicted (or removed) between the lookup and the answer: look again, once; the
            # cache then fetches it anew
            try:
                return await cached_file(request)
            except FileNotFoundError:
                return _error(503, "the file was removed from the cache while being served; retry")

    async def cached_file(request: Request) -> Response:
        filename = request.path_params["filename"]
        if filename.endswith(".metadata"):
            return await metadata(request, filename.removesuffix(".metadata"))
        try:
            found = await server.locate(filename)
        except SpacyIndexError as e:
            return _error(502, str(e))
        if found is None:
            return _error(404, "no such file in this index")
        d = found.dist
        if isinstance(found.source, FolderSource):
            request.scope.setdefault("state", {})["cache"] = "local"
            return file_response(request, Path(httpx.URL(d.url).path), f'"{d.sha256}"',
                                 media_type=_media_type(filename))
        cfg = getattr(found.source, "cfg", None)
        if not d.sha256 and cfg is not None and cfg.require_hashes:
            return _error(502, f"{filename!r} is listed without a sha256 and source "
                               f"{found.source.name!r} sets require_hashes")
        cache = server.cache_for(found.source)
        up = Upstream(url=d.url, filename=filename, sha256=d.sha256, size=d.size)
        if not d.sha256:
            return await _unverified_file(request, cache, up)
        etag = f'"{d.sha256}"'
        if server.s3_location is not None:
            # shared bucket: one download across all servers; the file is complete before
            # it is served (the others stream it from the bucket)
            store = server.s3_store_for(found.source)
            try:
                path = await store.fetch(d.sha256, filename, lambda: cache.ensure(up))
            except SpacyIndexError as e:
                return _error(502, str(e))
            return file_response(request, path, etag, media_type=_media_type(filename))
        if request.method == "HEAD" or request.headers.get("range"):
            local = cache.cached_now(d.sha256)
            if local is not None:
                request.scope.setdefault("state", {})["cache"] = "hit"
                return file_response(request, local, etag, media_type=_media_type(filename))
            # cold: never a whole download before answering. HEAD from the known size;
            # a Range from upstream as it comes, while the whole file is cached behind it
            cache.prefetch(up)
            request.scope.setdefault("state", {})["cache"] = "miss"
            if request.method == "HEAD" and d.size is not None:
                return Response(status_code=200, media_type=_media_type(filename), headers={
                    "ETag": etag, "Cache-Control": FILE_CACHE_CONTROL, "Accept-Ranges": "bytes",
                    "Content-Length": str(d.size)})
            return await _upstream_span(request, cache.client, up, etag)
        stream = cache.open(up)
        try:
            if cache.cached_now(d.sha256) is not None:
                # a hit: nothing to wait for, so no race with the client leaving (two more
                # tasks and loop turns before every cached file's first byte)
                await stream.__aenter__()
            elif not await _unless_gone(request, stream.__aenter__()):
                return Response(status_code=499)  # the client left while the download waited
        except CacheWriteError as e:
            return await _pass_through(request, found.source.client, up, e)
        except SpacyIndexError as e:
            return _error(502, str(e))
        request.scope.setdefault("state", {})["cache"] = "hit" if stream.hit else "miss"
        if stream.hit and stream.path is not None:
            await stream.__aexit__(None, None, None)
            return file_response(request, stream.path, etag, media_type=_media_type(filename))
        if _not_modified(request, etag):
            await stream.__aexit__(None, None, None)
            return Response(status_code=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Cache-Control": FILE_CACHE_CONTROL, "Accept-Ranges": "bytes"}
        if stream.size is not None:
            headers["Content-Length"] = str(stream.size)
        # Wait for the first chunk before answering: a file that fails verification within
        # its first chunk (the cache holds back the last chunk until the sha256 matched) gets
        # a clean 502 naming both hashes instead of a broken 200.
        chunks = stream.__aiter__()

        async def first_chunk() -> bytes:
            try:
                return await chunks.__anext__()
            except StopAsyncIteration:
                return b""

        try:
            got = await _unless_gone(request, first_chunk())
        except SpacyIndexError as e:
            await stream.__aexit__(None, None, None)
            log.error("%s: %s", filename, e)
            return _error(502, str(e))
        if not got:  # the client left before the first chunk: stop waiting for it
            await stream.__aexit__(None, None, None)
            return Response(status_code=499)
        first = got[0]

        async def body() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield first
                async for chunk in chunks:
                    yield chunk
            except SpacyIndexError as e:
                log.error("%s: %s", filename, e)
                raise
            finally:
                await stream.__aexit__(None, None, None)

        return StreamingResponse(body(), headers=headers, media_type=_media_type(filename))

    async def _unverified_file(request: Request, cache: FileCache, up: Upstream) -> Response:
        """A file its index lists with no hash: downloaded once, stored under the sha256 of
        what arrived (found again by its URL), served whole, marked in the access log."""
        state = request.scope.setdefault("state", {})
        stream = cache.open(up)
        try:
            async with stream:
                hit = stream.hit
        except SpacyIndexError as e:
            return _error(502, str(e))
        try:
            path = await cache.ensure(up)
        except SpacyIndexError as e:
            return _error(502, str(e))
        state["cache"] = "hit-unverified" if hit else "miss-unverified"
        return file_response(request, path, f'"{path.name}"', media_type=_media_type(up.filename))

    async def metadata(request: Request, filename: str) -> Response:
        try:
            found = await server.locate(filename)
        except SpacyIndexError as e:
            return _error(502, str(e))
        if found is None or found.dist.kind != "wheel" or not found.dist.sha256:
            return _error(404, "no metadata for that file in this index")
        d = found.dist
        store = server.metadata
        async with store.lock(d.sha256):
            if store.digest(d.sha256) is None:
                try:
                    data = await _fetch_metadata(server, found)
                except (SpacyIndexError, httpx.HTTPError) as e:
                    detail = str(e) if isinstance(e, SpacyIndexError) else describe_error(e, d.url)
                    return _error(502, f"cannot read the metadata of {filename!r}: {detail}")
                store.put(d.sha256, data, d.project)
                server.bound.stored(METADATA, d.sha256, d.filename, d.project, len(data))
                request.scope.setdefault("state", {})["cache"] = "miss"
            else:
                request.scope.setdefault("state", {})["cache"] = "hit"
                server.bound.used(METADATA, d.sha256, d.filename, d.project)
        meta_sha = store.digest(d.sha256)
        kept = store.in_memory.get(d.sha256)
        if kept is not None:
            return _bytes_response(request, kept, f'"{meta_sha}"', media_type="text/plain")
        try:
            return file_response(request, store.path(d.sha256), f'"{meta_sha}"',
                                 media_type="text/plain")
        except FileNotFoundError:  # removed between the check and the answer: heal next time
            return _error(503, "the metadata was removed while being served; retry")

    routes = [
        Route("/health", health),
        *observability_routes(server, metrics=metrics),  # /ready, /metrics
        Route("/simple/", root),
        Route("/simple/pypi/{project}/json", pypi_json),
        Route("/simple/{project}/", project_page),
        Route("/simple/{project}", project_page),
        Route("/pypi/{project}/json", pypi_json),
        Route("/files/{filename}", files, methods=["GET", "HEAD"]),
        Route("/{project}/json", pypi_json),
        *catalogue_routes(server),  # /, /index.html, /catalogue/<name>.html, .js, .css
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await server.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    inner: ASGIApp = CountCache(app, server.cache_stats)
    if server.auth is not None:
        inner = AuthMiddleware(inner, server.auth)
    logged = AccessLog(inner, metrics=server.metrics if metrics else None)
    server.log_fast = logged.log_fast
    #: for the server protocol (``protocol.protocol_class``): pages answered without a task
    #: (none with client authentication on: see Server.fast_response)
    logged.fast = server.fast_response if server.auth is None else None
    return logged  # type: ignore[return-value]


async def _unless_gone(request: Request, step: Awaitable[_T]) -> tuple[_T] | None:
    """``(result,)`` of ``step``, or None when the client went away first (``step`` is then
    cancelled). A request waiting for a slow upstream (a download's start or its first
    chunk) stops waiting when its client leaves, so it no longer counts as a consumer of the
    download (see FileCache.max_flights); the 499 it returns is never sent."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(step), asyncio.ensure_future(gone())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[0].cancelled():
        return None
    return (tasks[0].result(),)


async def _upstream_span(request: Request, client: httpx.AsyncClient, up: Upstream,
                         etag: str) -> Response:
    """HEAD or a Range of a file that is not cached yet, asked of upstream directly."""
    headers = {"Accept-Encoding": "identity"}
    if request.headers.get("range"):
        headers["Range"] = request.headers["range"]
    try:
        upstream = await client.send(client.build_request(request.method, up.url, headers=headers),
                                     stream=True)
    except httpx.HTTPError as e:
        return _error(502, f"cannot read {up.filename!r}: {describe_error(e, up.url)}")
    if upstream.status_code not in (200, 206, 416):
        await upstream.aclose()
        return _error(502, f"cannot read {up.filename!r}: HTTP {upstream.status_code} upstream")
    out = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    for name in ("content-length", "content-range"):
        if name in upstream.headers:
            out[name.title()] = upstream.headers[name]
    if request.method == "HEAD" or upstream.status_code == 416:
        await upstream.aclose()
        return Response(status_code=upstream.status_code, headers=out,
                        media_type=_media_type(up.filename))

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(body(), status_code=upstream.status_code, headers=out,
                             media_type=_media_type(up.filename))


_PASS_THROUGH_WARNED: set[str] = set()


async def _pass_through(request: Request, client: httpx.AsyncClient, up: Upstream,
                        why: SpacyIndexError) -> Response:
    """The cache cannot be written: stream the file from upstream as it comes (hashing it;
    a mismatch cuts the connection before the last byte), one warning per cache folder."""
    key = str(getattr(why, "root", ""))
    if key not in _PASS_THROUGH_WARNED:
        _PASS_THROUGH_WARNED.add(key)
        log.warning("%s; passing files through uncached", why)
    request.scope.setdefault("state", {})["cache"] = "pass-through"
    try:
        upstream = await client.send(client.build_request("GET", up.url), stream=True)
    except httpx.HTTPError as e:
        return _error(502, f"cannot download {up.filename!r}: {describe_error(e, up.url)}")
    if upstream.status_code != 200:
        await upstream.aclose()
        return _error(502, f"cannot download {up.filename!r}: HTTP {upstream.status_code} upstream")
    headers = {"Cache-Control": "no-store"}
    if upstream.headers.get("content-length"):
        headers["Content-Length"] = upstream.headers["content-length"]

    async def body() -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        held = b""
        try:
            async for chunk in upstream.aiter_raw():
                digest.update(chunk)
                if held:
                    yield held
                held = chunk
            if up.sha256 is not None and digest.hexdigest() != up.sha256:
                log.error("%s: sha256 mismatch (%s, expected %s); cut", up.filename,
                          digest.hexdigest(), up.sha256)
                raise DigestMismatch(up.filename, up.sha256, digest.hexdigest())
            if held:
                yield held
        finally:
            await upstream.aclose()

    return StreamingResponse(body(), headers=headers, media_type=_media_type(up.filename))


async def _fetch_metadata(server: Server, found: Located) -> bytes:
    d = found.dist
    assert d.sha256 is not None
    if isinstance(found.source, FolderSource):
        return await asyncio.to_thread(metadata_from_wheel_file, Path(httpx.URL(d.url).path), d.filename)
    cache = server.cache_for(found.source)
    local = await asyncio.to_thread(cache.cached, d.sha256)
    if local is not None:
        return await asyncio.to_thread(metadata_from_wheel_file, local, d.filename)
    upstream_meta = getattr(found.source, "upstream_files", {}).get(d.filename)
    if upstream_meta is not None and upstream_meta.has_metadata:
        resp, data = await read_capped(found.source.client, d.url + ".metadata", {},
                                       server.config.limits.max_metadata_size,
                                       f"the metadata of {d.filename!r}")
        if resp.status_code == 200:
            expected = upstream_meta.metadata_sha256
            if expected is None or hashlib.sha256(data).hexdigest() == expected:
                return data
            raise MetadataError(f"upstream metadata of {d.filename!r} does not match its sha256")
    try:
        result = await metadata_from_remote_wheel(
            found.source.client, d.url, filename=d.filename, size=d.size, tail=METADATA_TAIL
        )
    except MetadataError:
        up = Upstream(url=d.url, filename=d.filename, sha256=d.sha256, size=d.size)
        try:
            path = await cache.ensure(up)
        except CacheWriteError:  # the cache cannot be written: a temporary file, then gone
            return await _metadata_via_temp_file(found.source.client, up)
        return await asyncio.to_thread(metadata_from_wheel_file, path, d.filename)
    return result.metadata


async def _metadata_via_temp_file(client: httpx.AsyncClient, up: Upstream) -> bytes:
    import tempfile

    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(suffix=".whl") as tmp:
        async with client.stream("GET", up.url) as resp:
            if resp.status_code != 200:
                raise MetadataError(f"cannot download {up.filename!r}: HTTP {resp.status_code}")
            async for chunk in resp.aiter_raw():
                digest.update(chunk)
                await asyncio.to_thread(tmp.write, chunk)
        await asyncio.to_thread(tmp.flush)
        if up.sha256 is not None and digest.hexdigest() != up.sha256:
            raise DigestMismatch(up.filename, up.sha256, digest.hexdigest())
        return await asyncio.to_thread(metadata_from_wheel_file, Path(tmp.name), up.filename)


class AccessLog:
    """One line per request: method, path, status, bytes, cache hit/miss, duration."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.fast: Callable[[dict[str, Any]], Any] | None = None
        #: counts every request (server/metrics.py); None: nothing counted
        self.metrics = metrics
        #: the fast path's counters (Metrics.fast_counts, .fast_sent), updated inline in log_fast
        self._fast = metrics.fast_counts if metrics is not None else None
        self._fast_sent = metrics.fast_sent if metrics is not None else [0]

    @staticmethod
    def line(scope: Scope, status: int, sent: int, cache: str, seconds: float) -> None:
        # control characters escaped: a ``%0a`` in a path cannot forge a log line
        path = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", redact_url(scope["path"]))
        access.info("%s %s %s %dB %s %.3fs", scope["method"], path, status, sent, cache, seconds)

    def log_fast(self, scope: dict[str, Any], status: int, sent: int) -> None:
        """The line for a request the protocol answered itself (no task, so no timing)."""
        method = scope["method"]
        if method == "HEAD":
            sent = 0
        fast = self._fast
        if fast is not None:  # Metrics.count_fast, inline: a few dozen ns per page
            counts = fast.get(method)
            if counts is None:
                self.metrics.count_fast(method, status, sent)  # type: ignore[union-attr]
            else:
                counts[status] = counts.get(status, 0) + 1
                self._fast_sent[0] += sent
        if access.isEnabledFor(logging.INFO):
            self.line(scope, status, sent, "-", 0.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        sent = 0
        scope.setdefault("state", {})
        metrics = self.metrics
        flight = False  # a miss streaming from a running download (single flight)

        async def wrapped(message: Message) -> None:
            nonlocal status, sent, flight
            if message["type"] == "http.response.start":
                status = message["status"]
                if metrics is not None:
                    flight = metrics.response_started(scope)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == ZEROCOPY:  # the bytes sendfile(2) will send
                sent += int(message.get("count") or 0)
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            seconds = time.perf_counter() - start
            self.line(scope, status or 499, sent, scope["state"].get("cache", "-"), seconds)
            if metrics is not None:
                if flight:
                    metrics.response_ended()
                metrics.count(scope, status or 499, sent, seconds)


def _snapshot_applies(api_url: str, repo: str) -> bool:
    """The bundled snapshot stands in only for its own host and repository."""
    from spacy_index.sources import snapshot as snapshots

    try:
        return snapshots.load(None).applies_to(api_url.rstrip("/"), repo)
    except SpacyIndexError:
        return False


def build_server(
    config: ServeConfig,
    *,
    cache_dir: Path,
    api_url: str,
    token: str | None,
    offline_snapshot: bool = True,
    s3_cache: str | None = None,
    s3_endpoint_url: str | None = None,
    s3_lock_ttl: float = 120.0,
) -> Server:
    """Wire real sources from ``config`` (the CLI's entry point into the server)."""
    from spacy_index.api import fetch_catalog

    page_limits = {"max_page": config.limits.max_page_size,
                   "max_files": config.limits.max_page_files,
                   "parse_budget": config.limits.parse_budget}

    def factory(cfg: SourceConfig) -> Source:
        if cfg.kind in ("github", "spacy-models"):
            assert cfg.repo is not None
            repo = cfg.repo

            def load() -> Catalog:
                # bounded: one retry, short waits; the source's circuit breaker does the rest
                return fetch_catalog(repo, api_url=api_url, token=token, retries=1, max_wait=10,
                                     state_dir=cache_dir / "github", notify=say).catalog

            def say(message: str, name: str = cfg.name) -> None:
                log.warning("%s: %s", name, message.removeprefix("warning: "))

            fallback = None
            if offline_snapshot and cfg.kind == "spacy-models" and _snapshot_applies(api_url, repo):
                def fallback() -> Catalog:
                    return fetch_catalog(repo, api_url=api_url, offline=True).catalog

            return CatalogSource(cfg, load=load, offline_fallback=fallback, refresh=config.refresh)
        if cfg.kind == "folder":
            return FolderSource(cfg)
        return IndexSource(cfg, ttl=config.page_ttl, flat=cfg.kind == "find-links",
                           stale=config.stale_while_revalidate, **page_limits)

    upstream = IndexSource(
        SourceConfig(name="upstream", kind="simple", projects=("*",), url=config.upstream,
                     ca_bundle=config.ca_bundle, proxy=config.proxy),
        ttl=config.page_ttl, stale=config.stale_while_revalidate, **page_limits,
    )
    return Server(config, cache_dir=cache_dir, source_factory=factory, upstream=upstream,
                  s3_cache=s3_cache, s3_endpoint_url=s3_endpoint_url, s3_lock_ttl=s3_lock_ttl)


__all__ = ["AccessLog", "Server", "build_server", "create_app", "file_response"]
