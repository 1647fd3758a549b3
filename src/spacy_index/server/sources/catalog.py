"""GitHub releases (optionally spacy-models' meta checksums) as a refreshed catalog."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from packaging.utils import NormalizedName

from spacy_index.catalog import Catalog
from spacy_index.errors import SpacyIndexError
from spacy_index.model import Project
from spacy_index.server.config import SourceConfig
from spacy_index.server.sources.base import SourceDefaults
from spacy_index.server.sources.clients import source_client
from spacy_index.singleflight import SingleFlight

log = logging.getLogger("spacy_index.server")


class CatalogSource(SourceDefaults):
    """A catalog loaded in a worker thread, fresh for ``refresh`` seconds; after a failed
    first load, the bundled snapshot (``offline_fallback``) or, for ``retry_after`` seconds,
    the same error without a request."""

    holds_catalog = True

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
        self._loads: SingleFlight[None, Catalog] = SingleFlight()
        #: circuit breaker: after a failed first load, the same error for ``retry_after`` s
        self.retry_after = 30.0
        self._failed: tuple[float, SpacyIndexError] | None = None
        self.client, _ = source_client(None, None, None)
        self.files_client = self.client

    @property
    def loaded_at(self) -> float | None:
        """``time.monotonic()`` of the last successful load; None before the first."""
        return self._loaded_at if self._catalog is not None else None

    @property
    def failing(self) -> bool:
        """No catalog could be loaded yet, and the last try failed (see ``retry_after``)."""
        return self._failed is not None

    def wrap_loads(self, wrap: Callable[[Callable[[], Catalog], str], Callable[[], Catalog]]
                   ) -> None:
        """Put ``wrap(load, outcome)`` around the loaders (the metrics time and count them):
        outcome ``ok`` for the catalog's own load, ``snapshot`` for the offline fallback."""
        self._load = wrap(self._load, "ok")
        if self._fallback is not None:
            self._fallback = wrap(self._fallback, "snapshot")

    async def catalog(self) -> Catalog:
        if self._catalog is not None and time.monotonic() - self._loaded_at < self._refresh:
            return self._catalog
        # one load at a time, shared by every request waiting for it; it goes on when they
        # leave (the thread could not be stopped anyway: its catalog is kept, not loaded twice)
        return await self._loads.run(None, self._reload)

    async def _reload(self) -> Catalog:
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
