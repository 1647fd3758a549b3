"""The server's long-lived state (:class:`Server`): routing, sources, caches, rendered pages.

Built once per process (:func:`~spacy_index.server.wiring.build_server`); the routes reach it
as ``request.app.state.server``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from packaging.utils import NormalizedName

from spacy_index.cache import FileCache
from spacy_index.cache.index import FILES
from spacy_index.errors import InvalidFilename
from spacy_index.gcpause import without_gc
from spacy_index.model import Distribution, Project, parse_filename
from spacy_index.render.pep691 import JSON_CONTENT_TYPE
from spacy_index.server.auth import Authenticator
from spacy_index.server.config import ServeConfig, SourceConfig
from spacy_index.server.memory import Memory
from spacy_index.server.metrics import Metrics
from spacy_index.server.pages import PageEntry, entry_size, local_url, render_entry
from spacy_index.server.prefetch import Prefetcher
from spacy_index.server.responses import not_modified, page_response, page_target, valid_name
from spacy_index.server.sources import FILE_POOL, IndexSource, Source, in_batches
from spacy_index.server.stats import CacheStats
from spacy_index.server.stores import CacheBound, MetadataStore


@dataclass(frozen=True)
class Located:
    source: Source
    dist: Distribution


class Server:
    """State shared by the routes: routing, sources, caches. Built by :func:`build_server`."""

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
        memory: Memory | None = None,
    ) -> None:
        self.config = config
        #: makes every long-lived map with its bound (server/memory.py)
        self.memory = memory = memory or Memory()
        self.cache_dir = cache_dir
        self.sources: dict[str, Source] = {s.name: source_factory(s) for s in config.sources}
        self.upstream = upstream
        self.metadata = MetadataStore(cache_dir / "metadata", memory)
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
        self.located: LRUCache[str, Located] = memory.lru("located")
        self._indexed: LRUCache[str, Project] = memory.lru("indexed")
        #: rendered pages by (name, content type), bounded by the bytes of their bodies
        self.pages: LRUCache[tuple[str, str], PageEntry] = memory.lru(
            "rendered_bytes", getsizeof=entry_size)
        #: set by create_app: writes the access-log line of a request answered by fast_response
        self.log_fast: Callable[[dict[str, Any], int, int], None] | None = None
        #: file/metadata cache hits and misses since start (the catalogue page shows them)
        self.cache_stats = CacheStats()
        #: Prometheus metrics (server/metrics.py): its own registry; every source's client metered
        self.metrics = Metrics(self)
        for source in (*self.sources.values(), self.upstream):
            self.metrics.instrument(source)
        #: client authentication ([auth], server/auth.py); None when off
        self.auth = (Authenticator(config.auth, metrics=self.metrics,
                                   max_clients=memory.bounds.auth_clients)
                     if config.auth.enabled else None)
        self.auth_enabled = self.auth is not None
        #: the cache index: hit counts, last use, and the [cache] max_size bound (LRU)
        self.bound = CacheBound(cache_dir, config.cache.max_size, config.cache.pin, self.in_use)
        self.bound.on_evict = self.metrics.count_eviction
        #: the pages of served wheels' requirements, fetched behind ([server] prefetch)
        self.prefetch = Prefetcher(self.prefetch_page, self.page_ready, config.prefetch,
                                   memory.lru("prefetched"))

    async def prefetch_page(self, name: NormalizedName) -> None:
        """Look ``name`` up and render its PEP 691 JSON page, as a client's request would."""
        _source, project = await self.project(name)
        if project is not None:
            await self.render_async(project, JSON_CONTENT_TYPE)

    def page_ready(self, name: NormalizedName) -> bool:
        """True when ``name``'s JSON page is current and rendered (no I/O)."""
        project = self.source_for(name).peek(name)
        return project is not None and self.rendered(project, JSON_CONTENT_TYPE) is not None

    def source_for(self, name: NormalizedName) -> Source:
        source = self._routes.get(name)
        if source is None:
            cfg = self.config.route(name)
            source = self.sources[cfg.name] if cfg else self.upstream
            # the config never changes while serving: a route, once found, holds
            if len(self._routes) < self.memory.bounds.routes:
                self._routes[name] = source
        return source

    def cache_for(self, source: Source) -> FileCache:
        cache = self._caches.get(source.name)
        if cache is None:
            client = source.files_client  # its own pool, if any
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

    def downloads_in_flight(self) -> int:
        """Upstream downloads running now, over every source's file cache (``/metrics``)."""
        return sum(cache.flights() for cache in list(self._caches.values()))

    def in_use(self, sha: str) -> bool:
        return any(cache.in_use(sha) for cache in self._caches.values())

    def s3_store_for(self, source: Source) -> Any:
        """The shared-bucket cache layer for ``source`` (only with ``--cache s3://``)."""
        from spacy_index.cache.s3 import S3FileStore

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
        if cached and cached.project is project \
                and cached.version == self.metadata.version_of(project.name):
            return cached.body, cached.etag
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
        return entry.body, entry.etag

    def pypi_json(self, project: Project, base: str) -> tuple[bytes, str] | None:
        """The PyPI-style JSON for ``base`` (the server's own URL), rendered once per change;
        one entry per project (for the last base seen), so Host headers cannot grow the map."""
        cached = self.pages.get((project.name, "pypi-json"))
        if cached and cached.project is project and cached.headers == [(b"base", base.encode())]:
            return cached.body, cached.etag
        return None

    def render(self, project: Project, ctype: str) -> tuple[bytes, str]:
        """The page body and its ETag, re-rendered only when the project or metadata changed."""
        found = self.rendered(project, ctype)
        if found is not None:
            return found
        key = (project.name, ctype)
        entry = self._render_entry(project, ctype, self.metadata.version_of(project.name),
                                   self.pages.get(key))
        self.pages[key] = entry
        return entry.body, entry.etag

    def _render_entry(self, project: Project, ctype: str, version: int,
                      previous: PageEntry | None = None) -> PageEntry:
        """Render one page (no shared state is written: safe in a worker thread)."""
        return render_entry(project, ctype, version, self._advertised_metadata(project), previous)

    def _advertised_metadata(self, project: Project) -> list[str | None]:
        """Per file: the metadata sha256 its page line advertises (:meth:`local_view`)."""
        listed = self.metadata.listed()
        digest = self.metadata.digest
        out: list[str | None] = []
        source_of: dict[str, Source] = {}
        for d in project.files:
            meta_sha = digest(d.sha256, listed) if d.sha256 and d.kind == "wheel" else None
            if meta_sha is None:
                source = source_of.get(d.project)
                if source is None:
                    source = source_of[d.project] = self.source_for(d.project)
                upstream_meta = source.upstream_file(d.filename)
                if upstream_meta is not None:
                    meta_sha = upstream_meta.metadata_sha256
            out.append(meta_sha)
        return out

    def fast_response(self, scope: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Answer ``GET /simple/<project>/`` from an already-rendered page, without I/O.

        Called by the server protocol before any task is made (see ``protocol.py``). Returns
        None, and the request takes the normal route, unless the page is rendered and still
        current: the routed source's data is fresh, it is the project object the page was
        rendered from, and no metadata arrived since. The answer is the same bytes and headers
        the route would send (``page_response``). Never with client authentication on: every request
        then goes through the app's auth middleware.
        """
        if self.auth_enabled:
            return None
        path = scope["path"]
        if not path.startswith("/simple/") or not path.endswith("/") or scope["query_string"]:
            return None
        accept = if_none_match = None
        for key, value in scope["headers"]:
            if key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"if-none-match":
                if_none_match = value.decode("latin-1")
        target = page_target(path[8:-1], path, accept)
        if not isinstance(target, tuple):  # the route answers it (a redirect, an error)
            return None
        name, ctype = target
        cached = self.pages.get((name, ctype))
        if cached is None or cached.version != self.metadata.version_of(cached.project.name):
            return None
        project, body, etag, headers = cached.project, cached.body, cached.etag, cached.headers
        if self._indexed.get(project.name) is not project or project.name != name:
            return None
        if self.source_for(project.name).peek(project.name) is not project:
            return None
        status = 200
        if if_none_match is not None and not_modified(if_none_match, etag):
            response = page_response(if_none_match, body, ctype, etag=etag)
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
            name = valid_name(filename.split("-", 1)[0]) if "-" in filename else None
            if name is None:
                return None
        await self.project(name)
        return self.located.get(filename)

    def local_view(self, project: Project) -> Project:
        """Links to ``../../files/<filename>``; metadata advertised for hashed wheels."""
        files = (replace(d, url=local_url(d), core_metadata_sha256=meta_sha,
                         has_core_metadata=d.kind == "wheel" and d.sha256 is not None)
                 for d, meta_sha in zip(project.files, self._advertised_metadata(project),
                                        strict=True))
        return replace(project, files=tuple(files))

    async def aclose(self) -> None:
        await self.prefetch.aclose()
        for cache in self._caches.values():
            await cache.aclose()
        for source in (*self.sources.values(), self.upstream):
            await source.aclose()
