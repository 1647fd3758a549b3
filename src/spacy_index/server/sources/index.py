"""An existing simple index (PEP 503/691 pages) or a flat find-links page, possibly
private, as a source: pages cached, revalidated and fetched once per name at a time."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import TypeVar
from urllib.parse import urljoin

import httpx
from cachetools import LRUCache
from packaging.utils import NormalizedName

from spacy_index.catalog import Catalog
from spacy_index.errors import OverBudget, UpstreamError
from spacy_index.gcpause import kept_without_gc
from spacy_index.http import describe_error, redact_url
from spacy_index.model import Project
from spacy_index.render.pep691 import HTML_CONTENT_TYPE, JSON_CONTENT_TYPE
from spacy_index.server.config import LimitsConfig, SourceConfig
from spacy_index.server.memory import Memory
from spacy_index.server.sources.base import SourceDefaults
from spacy_index.server.sources.clients import FILE_POOL, PAGE_POOL, source_client
from spacy_index.server.sources.fetch import page_fetcher
from spacy_index.simple.parse import UpstreamFile, parse_page
from spacy_index.singleflight import SingleFlight
from spacy_index.urls import split_userinfo

log = logging.getLogger("spacy_index.server")
_T = TypeVar("_T")


def _links_at_most(body: bytes, ctype: str) -> int:
    """How many files a page can list at most: every PEP 691 file has a ``"filename"`` key,
    every PEP 503 file an ``<a`` tag (what else contains them only makes the count larger)."""
    if ctype == JSON_CONTENT_TYPE:
        return body.count(b'"filename"')
    return body.count(b"<a") + body.count(b"<A")


@dataclass
class _Cached:
    fetched: float
    project: Project | None
    files: dict[str, UpstreamFile]
    #: sha256 of the upstream body the project was parsed from: an unchanged body keeps the
    #: same Project object, so pages rendered from it stay cached (rendered once per change)
    digest: str = ""
    #: the upstream's validators, sent back as If-None-Match / If-Modified-Since (some
    #: networks' proxies strip them: the digest above works without them)
    etag: str | None = None
    last_modified: str | None = None


#: bodies larger than this are parsed in a worker thread, never on the event loop
_PARSE_IN_THREAD = 256 * 1024


async def in_batches(items: Iterable[_T], size: int = 2000) -> AsyncIterator[_T]:
    """``items``, letting the event loop run between batches of ``size`` (work on the loop
    over every file of a 200k-link page)."""
    for i, item in enumerate(items):
        if i and not i % size:
            await asyncio.sleep(0)
        yield item


class IndexSource(SourceDefaults):
    """An existing simple index (``simple``: one page per project) or a flat
    ``find-links`` page, possibly private.

    Pages are fresh for ``ttl`` seconds. After that, for ``stale`` more seconds, the cached
    page is answered at once and refreshed in the background (stale-while-revalidate); older
    pages are fetched before answering. When the upstream fails, the last good page is served
    whatever its age. An unchanged upstream body (same sha256) keeps the parsed project, so
    nothing is parsed or rendered again. Error pages, redirects to other hosts and pages with no
    valid distribution (captive portals) are never cached as project pages.
    """

    def __init__(self, cfg: SourceConfig, *, ttl: float = 60.0, flat: bool = False,
                 stale: float = 86400.0, max_page: int = LimitsConfig.max_page_size,
                 max_files: int = LimitsConfig.max_page_files,
                 parse_budget: float = LimitsConfig.parse_budget,
                 page_fetch: str = LimitsConfig.page_fetch,
                 memory: Memory | None = None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.flat = flat
        self.ttl = ttl
        self.stale = stale
        #: seconds an upstream error for a name is answered from memory
        self.error_ttl = 5.0

        settings = {"cfg_url": cfg.url, "username": cfg.username, "password": cfg.password,
                    "credentials": cfg.credentials, "ca_bundle": cfg.ca_bundle,
                    "proxy": cfg.proxy}
        self.client, clean = source_client(**settings, pool=PAGE_POOL)
        #: page fetches: in a process of their own, or on a loop of their own (see
        #: ``fetch``); ``client`` serves the rest (``.metadata``, range reads) here
        self.pages = page_fetcher(page_fetch, cfg.name, settings)
        #: file downloads get their own pool: a page lookup never waits behind them
        self.files_client, _ = source_client(**settings, pool=FILE_POOL)
        #: the largest upstream page accepted, compressed or decoded (a gzip bomb stops here)
        self.max_page = max_page
        #: the most files one page may list, counted before parsing (a 200k-link page would
        #: hold the GIL for seconds in json.loads and the garbage collector)
        self.max_files = max_files
        #: seconds one page's parse may take (in its worker thread), else an upstream error
        self.parse_budget = parse_budget
        assert clean is not None
        self.base = clean if (flat or clean.endswith("/")) else clean + "/"
        self.display = redact_url(self.base)
        memory = memory or Memory()
        #: bounded by files listed (a 200k-link page weighs 200k), LRU
        self._pages: LRUCache[str, _Cached] = memory.lru(
            "page_files", getsizeof=lambda c: 1 + (len(c.project.files) if c.project else 0))
        self._locks = memory.locks()
        #: recent failures per name: the same error for a few seconds, not one request each
        self._errors: LRUCache[str, tuple[float, str]] = memory.lru("errors")
        #: background refreshes of stale pages, one per name
        self._refreshing: SingleFlight[str, Project | None] = SingleFlight()
        #: page fetches for requests, one per name: shared by every request waiting for it,
        #: and cancelled when the last of them stops waiting (its client left: the route
        #: cancels it), so abandoned lookups of a slow upstream do not keep the page pool full
        self._flights: SingleFlight[str, Project | None] = SingleFlight(
            cancel_when_abandoned=True)
        self.upstream_files: LRUCache[str, UpstreamFile] = memory.lru("upstream_files")

    def _page_url(self, name: NormalizedName) -> str:
        return self.base if self.flat else urljoin(self.base, f"{name}/")

    def _key(self, name: NormalizedName) -> str:
        return f"{'' if self.flat else name}|{name}"

    async def _fetch(self, name: NormalizedName, previous: _Cached | None) -> _Cached:
        url = self._page_url(name)
        headers = {"Accept": f"{JSON_CONTENT_TYPE}, {HTML_CONTENT_TYPE};q=0.1, text/html;q=0.01"}
        if previous is not None and previous.project is not None:
            if previous.etag:
                headers["If-None-Match"] = previous.etag
            if previous.last_modified:
                headers["If-Modified-Since"] = previous.last_modified
        resp = await self.pages.fetch(url, headers, self.max_page,
                                      f"{self.display}: the page for {name!r}")
        body = resp.body
        if resp.status == 304 and previous is not None and previous.project is not None:
            return replace(previous, fetched=time.monotonic())
        if resp.status == 404 and not self.flat:
            return _Cached(time.monotonic(), None, {})
        if resp.status != 200:
            raise UpstreamError(f"{self.display}: HTTP {resp.status} for project {name!r}")
        if split_userinfo(resp.url)[2] != split_userinfo(url)[2]:
            raise UpstreamError(f"{self.display}: redirected to another host for {name!r}")
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (JSON_CONTENT_TYPE, HTML_CONTENT_TYPE, "text/html"):
            raise UpstreamError(f"{self.display}: unexpected content type {ctype!r} for {name!r}")
        def digest_and_count() -> tuple[str, int]:
            # the links counted (an upper bound, by scans in C, no objects made) before
            # anything is parsed
            return hashlib.sha256(body).hexdigest(), _links_at_most(body, ctype)

        if len(body) > _PARSE_IN_THREAD:  # hashlib lets go of the GIL: the loop runs on
            digest, listed = await asyncio.to_thread(digest_and_count)
        else:
            digest, listed = digest_and_count()
        validators = {"etag": resp.headers.get("etag"),
                      "last_modified": resp.headers.get("last-modified")}
        if previous is not None and previous.digest == digest:
            return replace(previous, fetched=time.monotonic(), **validators)
        if listed > self.max_files:
            raise UpstreamError(f"{self.display}: the page for {name!r} lists up to {listed:,} "
                                f"files, over the [limits] max_page_files limit of "
                                f"{self.max_files:,}")
        if len(body) > _PARSE_IN_THREAD:
            parsed = await asyncio.to_thread(kept_without_gc, self._parse, body, ctype,
                                             resp.url, name)
        else:
            parsed = self._parse(body, ctype, resp.url, name)
        return replace(parsed, digest=digest, **validators)

    def _parse(self, body: bytes, ctype: str, page_url: str, name: NormalizedName) -> _Cached:
        try:
            page = parse_page(body, ctype, page_url, None if self.flat else name,
                              budget=self.parse_budget)
        except OverBudget as e:
            raise UpstreamError(f"{self.display}: the page for {name!r}: {e}, over the "
                                f"[limits] parse_budget") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise UpstreamError(f"{self.display}: unreadable page for {name!r}") from e
        for refused in page.refused:
            log.warning("%s: left out of %s: %s", self.name, name, refused)
        dists = page.dists
        if self.flat:
            dists = [d for d in dists if d.project == name]
        elif not dists and ctype != JSON_CONTENT_TYPE:
            raise UpstreamError(f"{self.display}: page for {name!r} lists no distributions")
        if not dists:
            return _Cached(time.monotonic(), None, {})
        display = Catalog.from_distributions(dists).projects[name].display_name
        # the upstream's order, versions and status, as it gave them
        project = Project(name=name, display_name=display, files=tuple(dists),
                          listed_versions=page.versions, status=page.status)
        return _Cached(time.monotonic(), project, page.files)

    def _answer(self, name: NormalizedName) -> tuple[bool, Project | None]:
        """(answered, project) from the cache without I/O; a stale page starts a refresh."""
        cached = self._pages.get(self._key(name))
        if cached is None:
            return False, None
        age = time.monotonic() - cached.fetched
        if age < self.ttl:
            return True, cached.project
        if age < self.ttl + self.stale:
            self._refresh_in_background(name)
            return True, cached.project
        return False, None

    def peek(self, name: NormalizedName) -> Project | None:
        """The project if its page is cached and fresh, or stale within ``stale`` (then a
        background refresh starts); no I/O. None otherwise."""
        return self._answer(name)[1]

    def _refresh_in_background(self, name: NormalizedName) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: the next request refreshes
            self._refreshing.start(name, lambda: self._refresh(name, force=True))

    async def project(self, name: NormalizedName) -> Project | None:
        answered, project = self._answer(name)
        if answered:
            return project
        failed = self._errors.get(name)
        if failed is not None and time.monotonic() < failed[0]:
            raise UpstreamError(failed[1])  # failed moments ago: the same answer, no request
        return await self._flights.run(name, lambda: self._refresh(name))

    async def _refresh(self, name: NormalizedName, *, force: bool = False) -> Project | None:
        key = self._key(name)
        async with self._locks(name):
            cached = self._pages.get(key)
            if cached and time.monotonic() - cached.fetched < self.ttl:
                return cached.project
            if not force:
                answered, project = self._answer(name)
                if answered:
                    return project
            try:
                fresh = await self._fetch(name, cached)
            except (httpx.HTTPError, UpstreamError) as e:
                detail = e if isinstance(e, UpstreamError) else describe_error(e, self.base)
                if cached is not None:
                    log.warning("%s: %s; serving the last good page", self.name, detail)
                    return cached.project
                log.warning("%s: %s (%s)", self.name, detail, name)
                error = UpstreamError(f"source {self.name!r} ({self.display}) failed: {detail}")
                self._errors[name] = (time.monotonic() + self.error_ttl, str(error))
                raise error from None
            self._errors.pop(name, None)
            # before the page is visible (a page rendered meanwhile would miss them), a few
            # thousand at a time: a 200k-link page must not hold the loop for a second
            async for item in in_batches(fresh.files.items()):
                self.upstream_files[item[0]] = item[1]
            self._pages[key] = fresh
            return fresh.project

    async def project_names(self) -> list[str]:
        return []

    def upstream_file(self, filename: str) -> UpstreamFile | None:
        return self.upstream_files.get(filename)

    def start(self) -> None:
        """Start the page-fetch process now (``serve`` does, before it listens), not with
        the first lookup."""
        self.pages.start()

    async def aclose(self) -> None:
        tasks = [*self._refreshing.tasks(), *self._flights.tasks()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pages.aclose()
        await self.client.aclose()
        await self.files_client.aclose()
