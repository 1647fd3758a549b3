"""What the server asks of a source; each kind answers for itself (no ``isinstance`` on a
source kind, no ``getattr`` with a default in the app)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx
from packaging.utils import NormalizedName

from spacy_index.model import Distribution, Project
from spacy_index.server.config import SourceConfig
from spacy_index.simple.parse import UpstreamFile

if TYPE_CHECKING:
    from spacy_index.catalog import Catalog

#: how /metrics times a catalog load: (load, outcome) → the load to run instead
LoadWrapper = Callable[[Callable[[], "Catalog"], str], Callable[[], "Catalog"]]


class Source(Protocol):
    name: str

    @property
    def client(self) -> httpx.AsyncClient:
        """For ``.metadata`` and range reads on the server's loop, auth for the source only."""
        ...

    @property
    def files_client(self) -> httpx.AsyncClient:
        """For whole-file downloads into the cache: a pool of its own where the source has
        one, so that a page lookup never waits behind downloads."""
        ...

    @property
    def require_hashes(self) -> bool:
        """Files listed without a sha256 are refused (502), not served unverified."""
        ...

    async def project(self, name: NormalizedName) -> Project | None: ...

    def peek(self, name: NormalizedName) -> Project | None:
        """The project when it is known to be current without any I/O, else None."""
        ...

    async def project_names(self) -> list[str]: ...

    def local_path(self, dist: Distribution) -> Path | None:
        """The file on this machine, served as it is (no cache), where there is one."""
        ...

    def upstream_file(self, filename: str) -> UpstreamFile | None:
        """What the upstream page said of ``filename`` beyond the Distribution, if known."""
        ...

    @property
    def holds_catalog(self) -> bool:
        """A pipeline catalog loaded as a whole (a GitHub source): /ready waits for its first
        load, /metrics reports its age and the catalogue page lists it."""
        ...

    async def catalog(self) -> Catalog | None:
        """The pipeline catalog, loaded if it must be; None for sources without one."""
        ...

    @property
    def loaded_at(self) -> float | None:
        """When the catalog last loaded (``time.monotonic()``); None: never, or no catalog."""
        ...

    @property
    def failing(self) -> bool:
        """The last catalog load failed."""
        ...

    def wrap_loads(self, wrap: LoadWrapper) -> None:
        """Run every later catalog load through ``wrap`` (the metrics' timer)."""
        ...

    def local_state(self) -> str | None:
        """What /ready says of a source read from this machine ("ready", "unreadable");
        None for sources that answer from elsewhere."""
        ...

    async def aclose(self) -> None: ...


class SourceDefaults:
    """The answers most source kinds share; a kind overrides what it knows better."""

    cfg: SourceConfig

    @property
    def require_hashes(self) -> bool:
        return self.cfg.require_hashes

    def local_path(self, dist: Distribution) -> Path | None:
        return None  # downloaded through the cache

    def upstream_file(self, filename: str) -> UpstreamFile | None:
        return None  # no upstream page: the Distribution is all there is

    # no pipeline catalog, nothing on this machine: what a catalog or a folder says instead
    holds_catalog = False
    loaded_at: float | None = None
    failing = False

    async def catalog(self) -> Catalog | None:
        return None

    def wrap_loads(self, wrap: LoadWrapper) -> None:
        return None

    def local_state(self) -> str | None:
        return None
