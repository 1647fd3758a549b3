"""The catalogue page in ``spacy-index serve``: the same pages as a static build
(:mod:`spacy_index.render.catalogue`), plus which files the cache holds and its hit rate
since the server started.

Routes (added to ``create_app``'s list by :func:`catalogue_routes`): ``/`` and
``/index.html``, ``/catalogue/<name>.html``, ``/catalogue.js``, ``/catalogue.css``. Pages go
out with a strict Content-Security-Policy (scripts and styles only from the server itself, no
inline code); their links are relative, as in a static folder.

The catalogue lists the pipelines of the catalog sources (``spacy-models``, ``github``), each
name only from the source the config routes it to; the view of the catalog (languages,
compatibility) is worked out once per catalog refresh, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from packaging.utils import NormalizedName, canonicalize_name
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from spacy_index.catalog import Catalog
from spacy_index.errors import SpacyIndexError
from spacy_index.model import Distribution
from spacy_index.render import catalogue as render
from spacy_index.render.catalogue_data import Catalogue, ServeView, build_catalogue
from spacy_index.singleflight import SingleFlight

if TYPE_CHECKING:
    from spacy_index.server.sources import Source
    from spacy_index.server.state import Server

log = logging.getLogger("spacy_index.server")

#: the page policy, plus what only a header can say (no framing)
CSP_HEADER = render.CSP + "; frame-ancestors 'none'"
PAGE_HEADERS = {
    "Content-Security-Policy": CSP_HEADER,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # the cache columns change with every download
    "Cache-Control": "no-cache",
}
ASSET_TYPES = {render.SCRIPT: "text/javascript; charset=utf-8",
               render.STYLE: "text/css; charset=utf-8"}


@dataclass(frozen=True)
class _Built:
    catalogs: tuple[Catalog, ...]
    catalogue: Catalogue
    #: project → the source that serves it (for the cache lookups)
    sources: dict[NormalizedName, Source]


class CataloguePages:
    def __init__(self, server: Server) -> None:
        self.server = server
        self._built: _Built | None = None
        self._builds: SingleFlight[tuple[int, ...], _Built] = SingleFlight()
        self._assets = {name: render.asset(name) for name in ASSET_TYPES}
        self._etags = {name: '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                       for name, body in self._assets.items()}

    # -- the model ----------------------------------------------------------- #
    async def _catalogs(self) -> list[tuple[Source, Catalog]]:
        found = []
        for source in self.server.sources.values():
            if not source.holds_catalog:  # folders and upstream indexes
                continue
            try:
                catalog = await source.catalog()
            except SpacyIndexError as e:
                log.warning("catalogue: source %r is unavailable: %s", source.name, e)
                continue
            if catalog is not None:
                found.append((source, catalog))
        return found

    async def built(self) -> _Built:
        catalogs = await self._catalogs()
        current = self._built
        if current is not None and _same(current.catalogs, catalogs):
            return current
        # one build per set of catalogs, however many pages ask while it runs
        key = tuple(id(c) for _, c in catalogs)
        return await self._builds.run(key, lambda: self._build(catalogs))

    async def _build(self, catalogs: list[tuple[Source, Catalog]]) -> _Built:
        projects: dict[NormalizedName, Any] = {}
        sources: dict[NormalizedName, Source] = {}
        for source, catalog in catalogs:
            for name, project in catalog.projects.items():
                if name not in projects and self.server.source_for(name) is source:
                    projects[name] = project
                    sources[name] = source
        merged = Catalog(
            projects=dict(sorted(projects.items())),
            source="; ".join(c.source for _, c in catalogs if c.source),
            snapshot_date=next((c.snapshot_date for _, c in catalogs if c.snapshot_date), None),
        )
        model = await asyncio.to_thread(build_catalogue, merged)
        self._built = _Built(tuple(c for _, c in catalogs), model, sources)
        return self._built

    def _cached(self, built: _Built, dists: Iterable[Distribution]) -> dict[str, int]:
        """sha256 → size of each of ``dists`` whose file is in the cache (a stat each; the
        cache writes a file under its sha256 only once it is verified)."""
        out: dict[str, int] = {}
        for d in dists:
            source = built.sources.get(d.project)
            if not d.sha256 or source is None:
                continue
            try:
                out[d.sha256] = self.server.cache_for(source).path(d.sha256).stat().st_size
            except OSError:
                continue
        return out

    def _summary(self, built: _Built, cached: dict[str, int]) -> tuple[str, ...]:
        stats = getattr(self.server, "cache_stats", None)
        hashed = sum(1 for p in built.catalogue.pipelines for d in p.project.files if d.sha256)
        lines = [f"Cached: {len(cached):,} of {hashed:,} files with a sha256 "
                 f"({render.size_text(sum(cached.values()))})"
                 + (" in this server's local cache (the shared bucket is not listed)"
                    if getattr(self.server, "s3_location", None) is not None else "")]
        if stats is not None:
            up = stats.uptime()
            since = f"{up / 3600:.1f} h" if up >= 3600 else (
                f"{up / 60:.0f} min" if up >= 60 else f"{up:.0f} s")
            parts = []
            for kind, label in (("file", "files"), ("metadata", "PEP 658 metadata")):
                rate = stats.hit_rate(kind)
                parts.append(f"{label}: {stats.hits(kind):,} hits, {stats.misses(kind):,} misses"
                             + (f" ({rate:.0%} hit rate)" if rate is not None else ""))
            lines.append(f"Since the server started ({since} ago): " + "; ".join(parts))
        return tuple(lines)

    def _view(self, request: Request, built: _Built, dists: Iterable[Distribution]) -> ServeView:
        cached = self._cached(built, dists)
        public = getattr(self.server.config, "public_url", None)
        base = public or str(request.base_url).rstrip("/")
        return ServeView(index_url=base + "/simple/", index_url_fixed=bool(public),
                         cached=cached, summary=self._summary(built, cached))

    # -- routes -------------------------------------------------------------- #
    async def index(self, request: Request) -> Response:
        built = await self.built()
        dists = [d for p in built.catalogue.pipelines for d in p.project.files]

        def page() -> bytes:
            return render.render_index(built.catalogue,
                                       view=self._view(request, built, dists)).encode()

        return Response(await asyncio.to_thread(page), media_type="text/html; charset=utf-8",
                        headers=PAGE_HEADERS)

    async def pipeline(self, request: Request) -> Response:
        raw = request.path_params["name"]
        name = canonicalize_name(raw)
        if raw != name:
            return RedirectResponse(f"{quote(name)}.html", status_code=301)
        built = await self.built()
        found = next((p for p in built.catalogue.pipelines if p.name == name), None)
        if found is None:
            return PlainTextResponse(f"no pipeline named {name!r} in this index\n", status_code=404,
                                     headers={"X-Content-Type-Options": "nosniff",
                                              "Cache-Control": "no-store"})
        view = await asyncio.to_thread(self._view, request, built, found.project.files)
        body = render.render_pipeline(found, built.catalogue, links=_local_file, view=view)
        return Response(body, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[-1]
        etag = self._etags[name]
        headers = {"ETag": etag, "Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"}
        if etag in (request.headers.get("if-none-match") or ""):
            return Response(status_code=304, headers=headers)
        return Response(self._assets[name], media_type=ASSET_TYPES[name], headers=headers)


def _same(built: tuple[Catalog, ...], now: list[tuple[Source, Catalog]]) -> bool:
    """The very catalog objects the model was built from (sources replace theirs on refresh)."""
    return len(built) == len(now) and all(a is b for a, (_, b) in zip(built, now, strict=True))


def _local_file(dist: Distribution, page: str) -> str:
    """From ``/catalogue/<name>.html`` to the server's own ``/files/<filename>``."""
    return f"../files/{quote(dist.filename)}"


def catalogue_routes(server: Server) -> list[Route]:
    pages = CataloguePages(server)
    return [
        Route("/", pages.index),
        Route(f"/{render.INDEX_PAGE}", pages.index),
        Route(f"/{render.SCRIPT}", pages.asset),
        Route(f"/{render.STYLE}", pages.asset),
        Route(f"/{render.PIPELINE_DIR}/{{name}}.html", pages.pipeline),
    ]
