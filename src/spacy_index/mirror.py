"""Mirror mode: every selected file downloaded (once, verified) through the same
content-addressed cache as ``serve``, with PEP 658 ``.metadata`` sidecars, so the index
needs nothing outside itself."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from spacy_index.cache import FileCache, Upstream
from spacy_index.catalog import Catalog
from spacy_index.http import make_async_client
from spacy_index.metadata import metadata_from_wheel_file
from spacy_index.model import Distribution

Notify = Callable[[str], None]


@dataclass
class MirrorResult:
    catalog: Catalog
    #: ``files/<filename>`` → cached file, ``files/<filename>.metadata`` → bytes
    files: dict[str, Path | bytes]
    warnings: list[str]
    downloaded: int
    downloaded_bytes: int
    cached: int


def mirror(
    catalog: Catalog,
    cache_dir: Path,
    *,
    concurrency: int = 4,
    notify: Notify = lambda _: None,
    transport: httpx.AsyncBaseTransport | None = None,
    ca_bundle: str | None = None,
) -> MirrorResult:
    """Fetch every hashed file of ``catalog`` into the cache and lay out the mirror's files.

    Files without a known sha256 cannot be verified, so they are left out with a warning.
    """
    keep = [d for d in catalog.files if d.sha256]
    warnings = [f"left out of the mirror (no known sha256 to verify it): {d.filename}"
                for d in catalog.files if not d.sha256]

    async def run() -> tuple[dict[str, Path], int, int, int]:
        sem = asyncio.Semaphore(concurrency)
        paths: dict[str, Path] = {}
        counts = {"downloaded": 0, "bytes": 0, "cached": 0}
        async with make_async_client(transport=transport, ca_bundle=ca_bundle,
                                     timeout=httpx.Timeout(60.0, connect=10.0)) as client:
            cache = FileCache(cache_dir, client)

            async def one(d: Distribution) -> None:
                assert d.sha256 is not None
                async with sem:
                    hit = await asyncio.to_thread(cache.cached, d.sha256)
                    path = hit or await cache.ensure(
                        Upstream(url=d.url, filename=d.filename, sha256=d.sha256, size=d.size)
                    )
                if hit:
                    counts["cached"] += 1
                else:
                    counts["downloaded"] += 1
                    counts["bytes"] += path.stat().st_size
                    notify(f"mirrored {d.filename} ({path.stat().st_size:,} bytes, verified)")
                paths[d.filename] = path

            try:
                await asyncio.gather(*(one(d) for d in keep))
            finally:
                await cache.aclose()
        return paths, counts["downloaded"], counts["bytes"], counts["cached"]

    paths, downloaded, nbytes, cached = asyncio.run(run())
    files: dict[str, Path | bytes] = {}
    dists = []
    for d in keep:
        path = paths[d.filename]
        files[f"files/{d.filename}"] = path
        meta_sha = None
        if d.kind == "wheel":
            metadata = metadata_from_wheel_file(path, d.filename)
            files[f"files/{d.filename}.metadata"] = metadata
            meta_sha = hashlib.sha256(metadata).hexdigest()
        dists.append(replace(d, size=path.stat().st_size, core_metadata_sha256=meta_sha))
    mirrored = Catalog.from_distributions(
        dists, source=catalog.source, snapshot_date=catalog.snapshot_date,
        warnings=catalog.warnings, tags_without_release=catalog.tags_without_release,
    )
    return MirrorResult(mirrored, files, warnings, downloaded, nbytes, cached)
