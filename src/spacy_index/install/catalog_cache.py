"""The catalog as install and list read it: the cached JSON (only the requested projects
made into objects), refreshed live when older than a day, the bundled snapshot offline."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.utils import canonicalize_name

from spacy_index.catalog import Catalog
from spacy_index.config import DEFAULT_API_URL
from spacy_index.errors import SpacyIndexError, UpstreamUnreachable
from spacy_index.install.target import split_model

#: how long the cached catalog counts as fresh (an install that would change nothing uses it
#: whatever its age: it costs no network)
CATALOG_MAX_AGE = 24 * 3600.0


def _catalog_path(cache_dir: Path, api_key: str) -> Path:
    key = api_key
    if key == DEFAULT_API_URL:
        return cache_dir / "catalog.json"
    import hashlib

    return cache_dir / f"catalog-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


#: the cached catalog's format (``snapshot.catalog_to_json``) read here without importing
#: the snapshot module; any other format goes to ``snapshot.catalog_from_json``
_CATALOG_FORMAT = 1


def _read_catalog(path: Path, projects: Iterable[str] | None) -> Catalog:
    doc = json.loads(path.read_text())
    if projects is not None:
        wanted = {canonicalize_name(split_model(p)[0]) for p in projects}
        doc = {**doc, "files": [f for f in doc.get("files", ())
                                if canonicalize_name(str(f.get("filename", "")).split("-", 1)[0])
                                in wanted]}
    if doc.get("format") != _CATALOG_FORMAT:
        from spacy_index.sources import snapshot as snapshots

        return snapshots.catalog_from_json(doc)
    from spacy_index.catalog import catalog_from_files_json

    return catalog_from_files_json(doc)


def load_cached_catalog(cache_dir: Path, api_key: str, *, projects: Iterable[str] | None = None,
                        max_age: float = CATALOG_MAX_AGE) -> tuple[Catalog, str, bool] | None:
    """The cached catalog whatever its age, only ``projects`` (requested names) made into
    objects: ``(catalog, how, fresh?)``, or None when there is none (no network here).
    ``api_key``: :attr:`spacy_index.config.Settings.api_key` of the API it came from."""
    path = _catalog_path(cache_dir, api_key)
    try:
        age = time.time() - path.stat().st_mtime
        catalog = _read_catalog(path, projects)
    except (OSError, ValueError, KeyError, TypeError, SpacyIndexError):
        return None
    fresh = age < max_age
    return catalog, "cached catalog" if fresh else "cached catalog, older than a day", fresh


def cached_catalog(cache_dir: Path, *, fetch: Callable[[], Catalog],
                   bundled: Callable[[], Catalog], max_age: float, refresh: bool,
                   api_key: str = DEFAULT_API_URL,
                   projects: Iterable[str] | None = None) -> tuple[Catalog, str]:
    """The catalog for install/list: a cached copy if fresh, else ``fetch()`` (stored), else
    the last cached copy, or when offline ``bundled()`` (the bundled snapshot), which (one
    rule for every command) only stands in for github.com, never for another
    ``GITHUB_API_URL``. The snapshot is stored too, dated as old, so later runs read it fast
    and still try live. Both callables come from the caller: reading live sources is above
    this package in the data flow."""
    from spacy_index.sources import snapshot as snapshots

    default = api_key == DEFAULT_API_URL
    path = _catalog_path(cache_dir, api_key)
    if not refresh:
        loaded = load_cached_catalog(cache_dir, api_key, projects=projects, max_age=max_age)
        if loaded is not None and loaded[2]:
            return loaded[0], loaded[1]
    try:
        catalog = fetch()
        how, stale = "live catalog", False
    except UpstreamUnreachable:
        if path.is_file():
            try:
                return _read_catalog(path, projects), "cached catalog (offline)"
            except (OSError, ValueError, KeyError, TypeError, SpacyIndexError):
                pass
        if not default:
            raise
        catalog, how, stale = bundled(), "bundled snapshot (offline)", True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(snapshots.catalog_to_json(catalog)))
    if stale:
        os.utime(tmp, (0, 0))  # read fast next time, but never taken for a fresh live copy
    os.replace(tmp, path)
    return catalog, how
