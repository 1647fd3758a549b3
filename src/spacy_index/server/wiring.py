"""The Starlette application behind ``spacy-index serve``, and the server it runs on.

Routes (:mod:`.routes`):

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

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp

from spacy_index.catalog import Catalog
from spacy_index.errors import SpacyIndexError
from spacy_index.server import routes
from spacy_index.server.accesslog import AccessLog
from spacy_index.server.auth import AuthMiddleware
from spacy_index.server.catalogue import catalogue_routes
from spacy_index.server.config import ServeConfig, SourceConfig
from spacy_index.server.memory import Memory
from spacy_index.server.metrics import observability_routes
from spacy_index.server.sources import CatalogSource, FolderSource, IndexSource, Source
from spacy_index.server.state import Server
from spacy_index.server.stats import CountCache

log = logging.getLogger("spacy_index.server")


def create_app(server: Server, *, metrics: bool = True) -> Starlette:
    """The ASGI app of ``server``. ``metrics=False``: nothing is counted and there is no
    ``/metrics`` (the metrics benchmark's baseline)."""
    table = [
        Route("/health", routes.health),
        *observability_routes(server, metrics=metrics),  # /ready, /metrics
        Route("/simple/", routes.root),
        Route("/simple/pypi/{project}/json", routes.pypi_json),
        Route("/simple/{project}/", routes.project_page),
        Route("/simple/{project}", routes.project_page),
        Route("/pypi/{project}/json", routes.pypi_json),
        Route("/files/{filename}", routes.files, methods=["GET", "HEAD"]),
        Route("/{project}/json", routes.pypi_json),
        *catalogue_routes(server),  # /, /index.html, /catalogue/<name>.html, .js, .css
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await server.aclose()

    app = Starlette(routes=table, lifespan=lifespan)
    app.state.server = server
    inner: ASGIApp = CountCache(app, server.cache_stats)
    if server.auth is not None:
        inner = AuthMiddleware(inner, server.auth)
    logged = AccessLog(inner, metrics=server.metrics if metrics else None)
    server.log_fast = logged.log_fast
    #: for the server protocol (``protocol.protocol_class``): pages answered without a task
    #: (none with client authentication on: see Server.fast_response)
    logged.fast = server.fast_response if server.auth is None else None
    return logged  # type: ignore[return-value]


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

    # one maker of every long-lived map and its bound, for the sources and the server
    memory = Memory()
    page_limits = {"max_page": config.limits.max_page_size,
                   "max_files": config.limits.max_page_files,
                   "parse_budget": config.limits.parse_budget,
                   "page_fetch": config.limits.page_fetch}

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
                           stale=config.stale_while_revalidate, memory=memory, **page_limits)

    upstream = IndexSource(
        SourceConfig(name="upstream", kind="simple", projects=("*",), url=config.upstream,
                     ca_bundle=config.ca_bundle, proxy=config.proxy),
        ttl=config.page_ttl, stale=config.stale_while_revalidate, memory=memory, **page_limits,
    )
    return Server(config, cache_dir=cache_dir, source_factory=factory, upstream=upstream,
                  s3_cache=s3_cache, s3_endpoint_url=s3_endpoint_url, s3_lock_ttl=s3_lock_ttl,
                  memory=memory)

__all__ = ["build_server", "create_app"]
