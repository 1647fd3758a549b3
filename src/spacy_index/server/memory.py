"""Every map that lives as long as the server, made in one place with its bound.

The abuse issue's rule is that no sequence of requests grows memory without end: each map
kept from one request to the next (pages, upstream files, located files, locks, errors...)
is an LRU with a size. :class:`Bounds` holds those sizes, and :class:`Memory` makes the maps
from them; ``build_server`` makes one and hands it to the sources and the
:class:`~spacy_index.server.state.Server`, so that changing a bound is one change here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from spacy_index.singleflight import AsyncKeyedLocks

__all__ = ["Bounds", "Memory"]


@dataclass(frozen=True)
class Bounds:
    """The size of each long-lived map (entries, unless said otherwise); per source for the
    sources' maps."""

    #: an index source's cached pages, weighed by the files each lists (a 200k-link page
    #: weighs 200k)
    page_files: int = 2_000_000
    #: an index source's upstream records (hashes, metadata) by filename
    upstream_files: int = 400_000
    #: an index source's recent failures by name (one answer for a few seconds)
    errors: int = 10_000
    #: per-key locks: an index source's page fetches by name, metadata writes by wheel
    locks: int = 10_000
    #: filename -> the source and distribution that list it
    located: int = 400_000
    #: projects whose files are in ``located``
    indexed: int = 20_000
    #: rendered page bodies, in bytes
    rendered_bytes: int = 256 << 20
    #: project name -> the source that answers it (the config never changes while serving)
    routes: int = 100_000
    #: wheel sha256 -> its metadata file's sha256
    metadata_digests: int = 200_000
    #: project -> how often metadata of its wheels was stored (pages re-render on change)
    metadata_versions: int = 100_000
    #: wheels whose requirements' pages were prefetched (each wheel once, server/prefetch.py)
    prefetched: int = 50_000
    #: client authentication: credentials verified, clients failing, clients blocked (each)
    auth_clients: int = 10_000


class Memory:
    """Makes the long-lived maps, each bounded by its :attr:`bounds` field."""

    def __init__(self, bounds: Bounds | None = None) -> None:
        self.bounds = bounds or Bounds()

    def lru(self, bound: str, getsizeof: Callable[[Any], float] | None = None) -> LRUCache[Any, Any]:
        """A new LRU bounded by the :class:`Bounds` field named ``bound``."""
        return LRUCache(maxsize=getattr(self.bounds, bound), getsizeof=getsizeof)

    def locks(self) -> AsyncKeyedLocks[Any]:
        """Per-key ``asyncio`` locks, bounded by :attr:`Bounds.locks`."""
        return AsyncKeyedLocks(maxsize=self.bounds.locks)
