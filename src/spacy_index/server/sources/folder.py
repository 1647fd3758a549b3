"""A local folder of wheels and sdists, served from disk as it is."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

import httpx
from packaging.utils import NormalizedName

from spacy_index.catalog import Catalog
from spacy_index.errors import InvalidFilename, UpstreamError
from spacy_index.hashing import file_sha256
from spacy_index.model import Distribution, Project, parse_filename
from spacy_index.server.config import SourceConfig
from spacy_index.server.sources.base import SourceDefaults
from spacy_index.server.sources.clients import source_client


class FolderSource(SourceDefaults):
    """A local folder of wheels and sdists; hashes are computed once per (size, mtime)."""

    def __init__(self, cfg: SourceConfig) -> None:
        assert cfg.path is not None
        self.name = cfg.name
        self.cfg = cfg
        self.root = cfg.path
        self._hashes: dict[tuple[str, int, int], str] = {}

    @functools.cached_property
    def client(self) -> httpx.AsyncClient:
        # made on first use only: files are served from disk (local_path), so the app never
        # fetches through it, and a pool per folder would be opened for nothing
        return source_client(None, None, None)[0]

    @property
    def files_client(self) -> httpx.AsyncClient:
        return self.client

    def local_state(self) -> str | None:
        return "ready" if os.path.isdir(self.root) else "unreadable"

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
                sha = self._hashes[key] = file_sha256(entry.path)
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

    def local_path(self, dist: Distribution) -> Path | None:
        return Path(httpx.URL(dist.url).path)

    async def aclose(self) -> None:
        if "client" in self.__dict__:  # only if something made it
            await self.client.aclose()
