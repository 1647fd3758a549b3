"""A ``spacy-index serve`` app over a given catalog (by default the bundled snapshot), with
no network: the catalogue tests and bench/catalogue.py run it under uvicorn on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spacy_index.catalog import Catalog
from spacy_index.server.config import ServeConfig, SourceConfig, default_spacy_models_source
from spacy_index.server.sources import CatalogSource, IndexSource
from spacy_index.server.state import Server

#: nothing listens here: a name that reaches the upstream fails at once
NO_UPSTREAM = "http://127.0.0.1:9/simple/"


def offline_catalog() -> Catalog:
    from spacy_index.api import fetch_catalog

    return fetch_catalog(offline=True).catalog


def catalogue_server(cache_dir: Path, load: Callable[[], Catalog] = offline_catalog) -> Server:
    """A server whose spacy-models source is ``load()`` (default: the bundled snapshot)."""
    config = ServeConfig(sources=(default_spacy_models_source(),), upstream=NO_UPSTREAM)

    def factory(cfg: SourceConfig) -> CatalogSource:
        return CatalogSource(cfg, load=load, refresh=3600)

    upstream = IndexSource(
        SourceConfig(name="upstream", kind="simple", projects=("*",), url=NO_UPSTREAM), ttl=60)
    return Server(config, cache_dir=cache_dir, source_factory=factory, upstream=upstream)
