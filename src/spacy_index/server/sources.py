"""Where the server's projects come from.

Every source answers ``project(name)`` with a :class:`~spacy_index.model.Project` whose
distributions carry the *upstream* URL; the app rewrites links to ``/files/...`` and streams
through the cache, so clients never see an upstream URL or its credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import netrc
import os
import time
import zlib
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from cachetools import LRUCache
from packaging.utils import NormalizedName

from spacy_index.catalog import Catalog
from spacy_index.errors import InvalidFilename, SpacyIndexError, UpstreamError
from spacy_index.gcpause import kept_without_gc
from spacy_index.http import describe_error, make_async_client, origin, redact_url
from spacy_index.model import (
    Distribution,
    ListedFilename,
    Project,
    is_sha256,
    parse_filename,
    parse_listed_filename,
    parse_timestamp,
)
from spacy_index.render.pep691 import HTML_CONTENT_TYPE, JSON_CONTENT_TYPE
from spacy_index.server.config import LimitsConfig, SourceConfig
from spacy_index.server.loopthread import LoopThread

log = logging.getLogger("spacy_index.server")
_T = TypeVar("_T")


class Source(Protocol):
    name: str
    client: httpx.AsyncClient

    async def project(self, name: NormalizedName) -> Project | None: ...

    def peek(self, name: NormalizedName) -> Project | None:
        """The project when it is known to be current without any I/O, else None."""
        ...

    async def project_names(self) -> list[str]: ...

    async def aclose(self) -> None: ...


class OriginBasicAuth(httpx.Auth):
    """HTTP basic auth for one origin only; the secret never appears in ``repr``."""

    def __init__(self, username: str, password: str, allowed: str) -> None:
        self._auth = httpx.BasicAuth(username, password)
        self._origin = origin(allowed)

    def __repr__(self) -> str:
        return f"OriginBasicAuth(origin={self._origin!r}, credentials=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self._origin:
            yield from self._auth.auth_flow(request)
        else:
            request.headers.pop("Authorization", None)
            yield request


def strip_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, username, password)``; Prodigy puts its key in the username."""
    if "@" not in urlsplit(url).netloc:  # the common case, without httpx's full URL parse
        return url, None, None
    u = httpx.URL(url)
    user = u.username or None
    password = u.password or None
    return str(u.copy_with(username=None, password=None)), user, password


#: connections per source: pages (short answers, never behind a download) and files
PAGE_POOL = httpx.Limits(max_connections=32, max_keepalive_connections=16)
FILE_POOL = httpx.Limits(max_connections=64, max_keepalive_connections=16)


def _links_at_most(body: bytes, ctype: str) -> int:
    """How many files a page can list at most: every PEP 691 file has a ``"filename"`` key,
    every PEP 503 file an ``<a`` tag (what else contains them only makes the count larger)."""
    if ctype == JSON_CONTENT_TYPE:
        return body.count(b'"filename"')
    return body.count(b"<a") + body.count(b"<A")


class TooLarge(UpstreamError):
    """An upstream body over its cap (compressed or decoded): refused, never stored."""


#: inflated bytes per step: a gzip bomb is never inflated more than this at once
_INFLATE_STEP = 1 << 20


class _Inflater:
    """Content-Encoding decoding with a bound: at most ``_INFLATE_STEP`` bytes per step.

    httpx inflates each network read at once (a 64 KiB read of a gzip bomb is 64 MiB, and
    ``gzip, gzip`` a gigabyte from a few KB); only ``identity``, ``gzip`` and ``deflate``,
    one of them, are accepted (what is asked for), anything else is an upstream error."""

    def __init__(self, encoding: str, what: str) -> None:
        enc = encoding.strip().lower()
        self.raw_deflate_tried = enc != "deflate"
        if enc in ("", "identity"):
            self.z: Any = None
        elif enc in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send
            self.z = zlib.decompressobj()
        else:
            raise UpstreamError(f"{what} came with an unsupported Content-Encoding {encoding!r}")
        self.what = what

    def steps(self, data: bytes) -> Generator[bytes, None, None]:
        """The decoded bytes of ``data`` (the next bytes on the wire), a step at a time."""
        while True:
            try:
                out = self.z.decompress(data, _INFLATE_STEP)
            except zlib.error as e:
                if self.raw_deflate_tried:
                    raise UpstreamError(f"{self.what} does not decode ({e})") from None
                self.raw_deflate_tried = True
                self.z = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self.raw_deflate_tried = True
            data = self.z.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < _INFLATE_STEP:  # a full step may leave more pending
                return

    def decode_into(self, body: bytearray, data: bytes, limit: int) -> bool:
        """Append the decoded bytes of ``data`` to ``body``; False as soon as ``body`` holds
        more than ``limit`` bytes (blocking: zlib releases the GIL, so this runs in a worker
        thread; only ``body``, one growing buffer, outlives a step)."""
        for out in self.steps(data):
            body += out
            if len(body) > limit:
                return False
        return True


async def read_capped(client: httpx.AsyncClient, url: str, headers: Mapping[str, str],
                      limit: int, what: str) -> tuple[httpx.Response, bytes]:
    """GET ``url`` and read at most ``limit`` bytes, counting both the bytes on the wire and
    the decoded ones, so a small gzip that expands to a gigabyte stops at ``limit`` (inflated
    1 MiB at a time, in a worker thread: the event loop never inflates)."""
    headers = {"Accept-Encoding": "gzip, deflate", **headers}
    async with client.stream("GET", url, headers=headers) as resp:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"{what} is {int(declared):,} bytes, over the {limit:,} byte limit")
        if resp.is_stream_consumed:  # a response built in memory (a test's transport)
            if len(resp.content) > limit:
                raise TooLarge(f"{what} is over the {limit:,} byte limit")
            return resp, resp.content
        inflater = _Inflater(resp.headers.get("content-encoding", ""), what)
        body = bytearray()
        try:
            async for raw in resp.aiter_raw():
                if resp.num_bytes_downloaded > limit:
                    raise TooLarge(f"{what} is over the {limit:,} byte limit")
                if inflater.z is None:
                    body += raw
                elif not await asyncio.to_thread(inflater.decode_into, body, raw, limit):
                    raise TooLarge(f"{what} is over the {limit:,} byte limit (decoded)")
                if len(body) > limit:
                    raise TooLarge(f"{what} is over the {limit:,} byte limit")
        except BaseException:
            # the exception's traceback (this frame) can outlive the call in a reference
            # cycle until the garbage collector runs: not the up to ``limit`` bytes read
            body.clear()
            raise
    return resp, bytes(body)


def source_client(cfg_url: str | None, username: str | None, password: str | None,
                  credentials: str = "none", *, ca_bundle: str | None = None,
                  proxy: str | None = None,
                  pool: httpx.Limits = FILE_POOL) -> tuple[httpx.AsyncClient, str | None]:
    """A client whose auth goes only to the source's origin; also returns the clean URL."""
    clean, url_user, url_pass = strip_userinfo(cfg_url) if cfg_url else (None, None, None)
    user, secret = username or url_user, password or url_pass
    if clean and user is None and credentials == "netrc":
        host = httpx.URL(clean).host
        try:
            found = netrc.netrc().authenticators(host)
        except (OSError, netrc.NetrcParseError):
            found = None
        if found:
            user, secret = found[0], found[2]
    if clean and user is None and credentials == "keyring":
        try:
            import keyring  # optional

            cred = keyring.get_credential(clean, None)
        except Exception:  # keyring backends raise anything
            cred = None
        if cred is not None:
            user, secret = cred.username, cred.password
    auth = OriginBasicAuth(user, secret or "", clean) if (clean and user) else None
    client = make_async_client(
        auth=auth,
        timeout=httpx.Timeout(60.0, connect=10.0),
        ca_bundle=ca_bundle,
        proxy=proxy,
        limits=pool,
    )
    return client, clean


# --------------------------------------------------------------------------- catalogs
class CatalogSource:
    """GitHub releases (optionally spacy-models' meta checksums) as a refreshed catalog."""

    def __init__(
        self,
        cfg: SourceConfig,
        *,
        load: Callable[[], Catalog],
        offline_fallback: Callable[[], Catalog] | None = None,
        refresh: float = 600.0,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._load = load
        self._fallback = offline_fallback
        self._refresh = refresh
        self._catalog: Catalog | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        #: circuit breaker: after a failed first load, the same error for ``retry_after`` s
        self.retry_after = 30.0
        self._failed: tuple[float, SpacyIndexError] | None = None
        self.client, _ = source_client(None, None, None)

    async def catalog(self) -> Catalog:
        fresh = self._catalog is not None and time.monotonic() - self._loaded_at < self._refresh
        if fresh:
            assert self._catalog is not None
            return self._catalog
        async with self._lock:
            if self._catalog is not None and time.monotonic() - self._loaded_at < self._refresh:
                return self._catalog
            if self._failed is not None and time.monotonic() < self._failed[0]:
                raise self._failed[1]  # fail fast: the source was unreachable moments ago
            try:
                self._catalog = await asyncio.to_thread(self._load)
                self._failed = None
            except SpacyIndexError as e:
                if self._catalog is not None:
                    log.warning("%s: refresh failed, keeping the last catalog: %s", self.name, e)
                elif self._fallback is not None:
                    log.warning("%s: %s; using the bundled snapshot", self.name, e)
                    self._catalog = await asyncio.to_thread(self._fallback)
                else:
                    log.warning("%s: %s", self.name, e)
                    self._failed = (time.monotonic() + self.retry_after, e)
                    raise
            self._loaded_at = time.monotonic()
            return self._catalog

    async def project(self, name: NormalizedName) -> Project | None:
        return (await self.catalog()).projects.get(name)

    def peek(self, name: NormalizedName) -> Project | None:
        """The project if the catalog is loaded and fresh (no I/O, no refresh), else None."""
        if self._catalog is None or time.monotonic() - self._loaded_at >= self._refresh:
            return None
        return self._catalog.projects.get(name)

    async def project_names(self) -> list[str]:
        return [p.display_name for p in (await self.catalog()).projects.values()]

    async def aclose(self) -> None:
        await self.client.aclose()


# --------------------------------------------------------------------------- folders
class FolderSource:
    """A local folder of wheels and sdists; hashes are computed once per (size, mtime)."""

    def __init__(self, cfg: SourceConfig) -> None:
        assert cfg.path is not None
        self.name = cfg.name
        self.cfg = cfg
        self.root = cfg.path
        self._hashes: dict[tuple[str, int, int], str] = {}
        self.client, _ = source_client(None, None, None)

    def _scan(self) -> Catalog:
        dists = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as e:
            raise UpstreamError(f"source {self.name!r}: cannot read {str(self.root)!r}: {e.strerror}") from e
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                parsed = parse_filename(entry.name)
            except InvalidFilename:
                continue
            st = entry.stat()
            key = (entry.name, st.st_size, st.st_mtime_ns)
            sha = self._hashes.get(key)
            if sha is None:
                h = hashlib.sha256()
                with open(entry.path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                sha = self._hashes[key] = h.hexdigest()
            dists.append(Distribution(
                project=parsed.name, filename=entry.name, url=Path(entry.path).as_uri(),
                version=parsed.version, kind=parsed.kind, sha256=sha, size=st.st_size,
            ))
        return Catalog.from_distributions(dists, source=f"folder {self.root}")

    async def project(self, name: NormalizedName) -> Project | None:
        return (await asyncio.to_thread(self._scan)).projects.get(name)

    def peek(self, name: NormalizedName) -> Project | None:
        return None  # a folder can change at any time: always rescan

    async def project_names(self) -> list[str]:
        return [p.display_name for p in (await asyncio.to_thread(self._scan)).projects.values()]

    async def aclose(self) -> None:
        await self.client.aclose()


# --------------------------------------------------------------------------- indexes
class _Anchors(HTMLParser):
    def __init__(self, budget: _Budget) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[dict[str, str | None]] = []
        self.meta: dict[str, str] = {}
        self.budget = budget

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.budget.check()
        if tag == "a":
            self.links.append(dict(attrs))
        elif tag == "meta":
            found = dict(attrs)
            if found.get("name") and found.get("content") is not None:
                self.meta[str(found["name"])] = str(found["content"])


def _metadata_flag(value: Any) -> tuple[bool, str | None]:
    """PEP 658/714 ``core-metadata`` value → (available, sha256 or None)."""
    if isinstance(value, dict):
        sha = value.get("sha256")
        return True, sha.lower() if isinstance(sha, str) and is_sha256(sha.lower()) else None
    if isinstance(value, str):
        if value.startswith("sha256="):
            sha = value.removeprefix("sha256=").lower()
            return True, sha if is_sha256(sha) else None
        return value.lower() == "true", None
    return bool(value), None


@dataclass(frozen=True)
class UpstreamFile:
    """What the server knows of a file beyond the Distribution: upstream metadata."""

    has_metadata: bool
    metadata_sha256: str | None


@dataclass(frozen=True)
class ParsedPage:
    """A project page (or flat page) from an upstream index, every listed file kept."""

    dists: list[Distribution]
    files: dict[str, UpstreamFile]
    #: PEP 700 ``versions``, where the page gives them
    versions: tuple[str, ...] | None = None
    #: PEP 792 ``(status, reason)``, where the page gives one
    status: tuple[str, str | None] | None = None
    #: files left out because their names are unsafe as paths, with the reason
    refused: tuple[str, ...] = ()


class OverBudget(ValueError):
    """Parsing a page took longer than its time budget."""


class _Budget:
    """A deadline, checked once per JSON object, HTML tag and file while a page is parsed.

    Called as json.loads's ``object_hook``, it also makes a Python call per JSON object,
    where another thread can take the GIL: one C call over a 9 MB page would hold it for
    100-500 ms and stall the event loop."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.deadline = math.inf if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise OverBudget(f"parsing took over {self.seconds:g} s")

    def __call__(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.check()
        return obj


def _json_entries(body: bytes, budget: _Budget) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    doc = json.loads(body, object_hook=budget)
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise ValueError("not a PEP 691 project page")
    entries = []
    for f in doc["files"]:
        if not isinstance(f, dict):
            raise ValueError("a PEP 691 file entry is not an object")
        hashes = f.get("hashes")
        if not isinstance(hashes, dict):
            raise ValueError("a PEP 691 file entry has no hashes object")
        entries.append({
            "filename": f.get("filename"), "url": f.get("url"),
            "sha256": hashes.get("sha256"),
            "requires_python": f.get("requires-python"),
            "metadata": f.get("core-metadata", f.get("dist-info-metadata", False)),
            "yanked": f.get("yanked"), "size": f.get("size"),
            "upload_time": f.get("upload-time"), "provenance": f.get("provenance"),
        })
    return entries, doc


def _html_entries(body: bytes, budget: _Budget) -> tuple[list[dict[str, Any]], dict[str, str]]:
    parser = _Anchors(budget)
    parser.feed(body.decode("utf-8", errors="replace"))
    entries = []
    for a in parser.links:
        href = a.get("href") or ""
        base, _, fragment = href.partition("#")
        sha = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        yanked = a.get("data-yanked")
        path = urlsplit(base).path
        entries.append({
            # the file is what the URL's path names (as pip reads it), unquoted, no query
            "filename": unquote(path.rsplit("/", 1)[-1]), "url": base, "sha256": sha,
            "requires_python": a.get("data-requires-python"),
            "metadata": a.get("data-core-metadata", a.get("data-dist-info-metadata")) or False,
            "yanked": (yanked or True) if yanked is not None else None,
            "size": None, "upload_time": a.get("data-upload-time"),
            "provenance": a.get("data-provenance"),
        })
    return entries, parser.meta


def _status(value: Any, reason: Any) -> tuple[str, str | None] | None:
    if not isinstance(value, str) or not value:
        return None
    return value, reason if isinstance(reason, str) else None


def parse_page(
    body: bytes, content_type: str, page_url: str, project: NormalizedName | None,
    *, budget: float | None = None,
) -> ParsedPage:
    """Parse a PEP 691 JSON or PEP 503 HTML page (or a flat find-links page when ``project``
    is None) into distributions, in the upstream's order.

    Every file the page lists is kept, whatever its format or version spelling (``.egg``,
    ``.exe``, ``.tar.bz2``, legacy versions): pip and uv skip what they cannot use. Only names
    that are unsafe as a path are refused. On a flat page (no project), only wheels and sdists
    can say which project they belong to, so only those are kept.

    ``budget``: seconds the parse may take, else :class:`OverBudget` (a ``ValueError``).
    """
    versions = status = None
    clock = _Budget(budget)
    if content_type.startswith("application/vnd.pypi.simple.v1+json"):
        entries, doc = _json_entries(body, clock)
        listed = doc.get("versions")
        if isinstance(listed, list) and all(isinstance(v, str) for v in listed):
            versions = tuple(listed)
        ps = doc.get("project-status")
        if isinstance(ps, dict):
            status = _status(ps.get("status"), ps.get("reason"))
    else:
        entries, meta = _html_entries(body, clock)
        status = _status(meta.get("pypi:project-status"), meta.get("pypi:project-status-reason"))
    dists: list[Distribution] = []
    extra: dict[str, UpstreamFile] = {}
    refused: list[str] = []
    for e in entries:
        clock.check()
        filename = e["filename"]
        if not isinstance(filename, str) or not isinstance(e["url"], str):
            continue
        try:
            if project is None:
                strict = parse_filename(filename)
                name, listed_file = strict.name, ListedFilename(strict.version, str(strict.version), strict.kind)
            else:
                name, listed_file = project, parse_listed_filename(filename, project)
        except InvalidFilename as exc:
            if project is not None:
                refused.append(f"{filename!r}: {exc.reason}")
            continue
        sha = e["sha256"].lower() if isinstance(e["sha256"], str) else None
        has_meta, meta_sha = _metadata_flag(e["metadata"])
        size = e["size"] if isinstance(e["size"], int) and not isinstance(e["size"], bool) and e["size"] >= 0 else None
        yanked = e["yanked"]
        url = e["url"] if e["url"].startswith(("https://", "http://")) else urljoin(page_url, e["url"])
        url = strip_userinfo(url)[0]  # auth is per origin, never in URLs
        provenance = e["provenance"] if isinstance(e["provenance"], str) and e["provenance"] else None
        dists.append(Distribution(
            project=name, filename=filename, url=url,
            version=listed_file.version, kind=listed_file.kind,
            version_text=None if listed_file.version is not None else listed_file.version_text,
            sha256=sha if sha and is_sha256(sha) else None, size=size,
            upload_time=parse_timestamp(e["upload_time"]) if isinstance(e["upload_time"], str) else None,
            requires_python=e["requires_python"] if isinstance(e["requires_python"], str) else None,
            yanked=(yanked if isinstance(yanked, str) else "") if yanked not in (None, False) else None,
            provenance=urljoin(page_url, provenance) if provenance else None,
        ))
        extra[filename] = UpstreamFile(has_meta and listed_file.kind == "wheel", meta_sha)
    return ParsedPage(dists, extra, versions, status, tuple(refused))


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


def _forget(registry: dict[str, Any], name: str, entry: object,
            task: asyncio.Task[Project | None]) -> None:
    """A page fetch's done callback: ``entry`` leaves ``registry`` (unless a newer one took
    its place) and the task's exception, raised to its waiters or logged by ``_refresh``, is
    retrieved so that asyncio does not complain."""
    if registry.get(name) is entry:
        del registry[name]
    if not task.cancelled():
        task.exception()


@dataclass(eq=False)
class _Flight:
    """A page fetch and how many requests wait for it."""

    task: asyncio.Task[Project | None]
    waiters: int = 0


class IndexSource:
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
                 parse_budget: float = LimitsConfig.parse_budget) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.flat = flat
        self.ttl = ttl
        self.stale = stale
        #: seconds an upstream error for a name is answered from memory
        self.error_ttl = 5.0
        self.client, clean = source_client(cfg.url, cfg.username, cfg.password, cfg.credentials,
                                           ca_bundle=cfg.ca_bundle, proxy=cfg.proxy,
                                           pool=PAGE_POOL)
        #: page fetches: their own client, used only on their own loop (see LoopThread);
        #: ``client`` serves the rest (``.metadata``, range reads) on the server's loop
        self.pages_client, _ = source_client(cfg.url, cfg.username, cfg.password,
                                             cfg.credentials, ca_bundle=cfg.ca_bundle,
                                             proxy=cfg.proxy, pool=PAGE_POOL)
        self.pages_loop = LoopThread(f"pages:{cfg.name}")
        #: file downloads get their own pool: a page lookup never waits behind them
        self.files_client, _ = source_client(cfg.url, cfg.username, cfg.password,
                                             cfg.credentials, ca_bundle=cfg.ca_bundle,
                                             proxy=cfg.proxy, pool=FILE_POOL)
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
        #: bounded by files listed (a 200k-link page weighs 200k), LRU
        self._pages: LRUCache[str, _Cached] = LRUCache(
            maxsize=2_000_000, getsizeof=lambda c: 1 + (len(c.project.files) if c.project else 0))
        self._locks: LRUCache[str, asyncio.Lock] = LRUCache(maxsize=10_000)
        #: recent failures per name: the same error for a few seconds, not one request each
        self._errors: LRUCache[str, tuple[float, str]] = LRUCache(maxsize=10_000)
        self._refreshing: dict[str, asyncio.Task[Project | None]] = {}
        #: page fetches in flight for requests (not background refreshes), by name
        self._flights: dict[str, _Flight] = {}
        self.upstream_files: LRUCache[str, UpstreamFile] = LRUCache(maxsize=400_000)

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
        resp, body = await self.pages_loop.run(read_capped(
            self.pages_client, url, headers, self.max_page,
            f"{self.display}: the page for {name!r}"))
        if resp.status_code == 304 and previous is not None and previous.project is not None:
            return replace(previous, fetched=time.monotonic())
        if resp.status_code == 404 and not self.flat:
            return _Cached(time.monotonic(), None, {})
        if resp.status_code != 200:
            raise UpstreamError(f"{self.display}: HTTP {resp.status_code} for project {name!r}")
        if urlsplit(str(resp.url)).netloc.rsplit("@", 1)[-1] != urlsplit(url).netloc.rsplit("@", 1)[-1]:
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
                                             str(resp.url), name)
        else:
            parsed = self._parse(body, ctype, str(resp.url), name)
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
        if name in self._refreshing:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the next request refreshes
            task = asyncio.get_running_loop().create_task(self._refresh(name, force=True))
            self._refreshing[name] = task
            task.add_done_callback(lambda t: _forget(self._refreshing, name, t, t))


    async def project(self, name: NormalizedName) -> Project | None:
        answered, project = self._answer(name)
        if answered:
            return project
        failed = self._errors.get(name)
        if failed is not None and time.monotonic() < failed[0]:
            raise UpstreamError(failed[1])  # failed moments ago: the same answer, no request
        # One fetch per name, shared by every request waiting for it. When the last of them
        # stops waiting (its client left: the route cancels it), the fetch is cancelled too,
        # so abandoned lookups of a slow upstream do not keep the page pool full.
        flight = self._flights.get(name)
        if flight is None:
            flight = self._flights[name] = _Flight(
                asyncio.get_running_loop().create_task(self._refresh(name)))
            flight.task.add_done_callback(lambda t: _forget(self._flights, name, flight, t))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done():
                self._flights.pop(name, None)  # a request arriving now starts a new fetch
                flight.task.cancel()


    async def _refresh(self, name: NormalizedName, *, force: bool = False) -> Project | None:
        key = self._key(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
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

    async def aclose(self) -> None:
        tasks = [*self._refreshing.values(), *(f.task for f in self._flights.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pages_loop.aclose(self.pages_client.aclose())
        await self.client.aclose()
        await self.files_client.aclose()


def with_local_files(project: Project, url_for: Callable[[Distribution], str]) -> Project:
    """The project with every URL pointing at the server."""
    return replace(project, files=tuple(replace(d, url=url_for(d)) for d in project.files))


__all__ = [
    "CatalogSource",
    "FolderSource",
    "IndexSource",
    "Mapping",
    "Source",
    "UpstreamFile",
    "parse_page",
    "source_client",
]
